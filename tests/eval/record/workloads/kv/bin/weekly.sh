#!/bin/bash
# Sunday: slow log and latency review, memory doctor, purge counters older than two
# weeks, archive the week's backups.
set -eu
R="redis-cli -p $KV_PORT"
wk=$(date -u -d @$EVAL_TS +%G-W%V)
out=$KV/reports/weekly-$wk.txt
{
  $R SLOWLOG LEN
  $R SLOWLOG GET 25
  $R LATENCY DOCTOR
  $R MEMORY DOCTOR
  $R MEMORY STATS | head -n 40
} > $out
$R SLOWLOG RESET > /dev/null
cutoff=$(date -u -d "@$(( EVAL_TS - 14 * 86400 ))" +%Y-%m-%d)
$R --scan --pattern 'stats:*' | sort | awk -F: -v c="$cutoff" '$2 < c' | xargs -r $R DEL >> $out
tar -czf $KV/archive/backups-$wk.tar.gz -C $KV/backup .
sha256sum $KV/archive/backups-$wk.tar.gz >> $KV/archive/SHA256SUMS
