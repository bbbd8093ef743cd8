#!/bin/bash
# Cache warmer: the login service's recent sessions are pushed into the cache (a short
# token per session), with the user's last session id and the day's counters.
set -eu
R="redis-cli -p $KV_PORT"
day=$(date -u -d @$EVAL_TS +%Y-%m-%d)
dow=$(date -u -d @$EVAL_TS +%u)
if [ "$dow" -ge 6 ]; then n=$(( 1 + EVAL_RAND % 2 )); else n=$(( 2 + EVAL_RAND % 4 )); fi
for i in $(seq $n); do
  sid=$(head -c 9 /dev/urandom | base64 | tr '+/' 'Zq')
  uid=$(( 10000 + (RANDOM * 3 + EVAL_RAND) % 90000 ))
  $R SET "session:$sid" "{\"uid\":$uid,\"ts\":$EVAL_TS}" EX 1800 > /dev/null
  $R HSET "user:$uid" last_session "$sid" > /dev/null
done
$R INCRBY "stats:$day:sessions" $n > /dev/null
$R EXPIRE "stats:$day:sessions" 2764800 > /dev/null
