#!/bin/bash
# Stop the web host's nginx.
nginx -c /srv/www/conf/nginx.conf -s quit 2>/dev/null || true
[ -f /srv/www/run/fcgiwrap.pid ] && kill -- "-$(cat /srv/www/run/fcgiwrap.pid)" 2>/dev/null
sleep 0.3
