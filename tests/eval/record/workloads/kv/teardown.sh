#!/bin/bash
# Stop the key-value store host's redis-server.
redis-cli -p 6390 SHUTDOWN NOSAVE >/dev/null 2>&1 || { [ -f /srv/kv/run/redis.pid ] && kill "$(cat /srv/kv/run/redis.pid)" 2>/dev/null; }
sleep 0.3
true
