#!/bin/bash
# The operator looks around: a few read-only commands, different each time.
set -u
cmds=(
  "redis-cli -p $KV_PORT INFO clients"
  "redis-cli -p $KV_PORT CLIENT LIST"
  "redis-cli -p $KV_PORT SLOWLOG GET 10"
  "redis-cli -p $KV_PORT CONFIG GET maxmemory*"
  "redis-cli -p $KV_PORT DBSIZE"
  "redis-cli -p $KV_PORT INFO replication"
  "redis-cli -p $KV_PORT --scan --pattern 'user:4*' | head -n 20"
  "redis-cli -p $KV_PORT MEMORY USAGE users:seen"
  "ls -lh $KV/backup"
  "tail -n 50 $KV/log/redis.log"
  "ps -fu redis"
  "ss -tlnp"
  "free -m"
  "df -h $KV"
  "du -sh $KV/data $KV/backup"
  "cat $KV/log/backup.log"
)
n=$(( 2 + EVAL_RAND % 4 ))
for i in $(shuf -i 0-$(( ${#cmds[@]} - 1 )) -n $n --random-source=<(yes $EVAL_RAND)); do
  eval "${cmds[$i]}" > /dev/null 2>&1 || true
done
