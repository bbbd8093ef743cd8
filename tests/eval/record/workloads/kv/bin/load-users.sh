#!/bin/bash
# Hourly loader: the profile service's changes since the last run, in bulk (--pipe).
set -eu
R="redis-cli -p $KV_PORT"
/usr/bin/python3 $KV/bin/gen_users.py $EVAL_TS $EVAL_RAND | $R --pipe > $KV/run/last-load.txt
$R INCR "stats:$(date -u -d @$EVAL_TS +%Y-%m-%d):loads" > /dev/null
if (( EVAL_RAND % 3 == 0 )); then
  $R ZREMRANGEBYSCORE users:seen -inf $(( EVAL_TS - 30 * 86400 )) > /dev/null
fi
