#!/bin/bash
# Midnight: rotate the server log (copy and truncate, redis keeps it open), keep 14.
set -eu
L=$KV/log
d=$(date -u -d @$(( EVAL_TS - 3600 )) +%Y%m%d)
cp $L/redis.log $L/redis.log-$d
truncate -s 0 $L/redis.log
gzip -f $L/redis.log-$d
ls -1 $L/redis.log-*.gz | sort | head -n -14 | xargs -r rm -f
chown redis:redis $L/*
