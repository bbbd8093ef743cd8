#!/bin/bash
# Stop the app's HTTP endpoint, take back alex's sudo rights.
[ -f /srv/shell/http.pid ] && kill "$(cat /srv/shell/http.pid)" 2>/dev/null
rm -f /etc/sudoers.d/ruleless-eval-alex
true
