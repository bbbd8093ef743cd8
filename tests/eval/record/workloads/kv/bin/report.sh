#!/bin/bash
# Morning memory and keyspace report; reports older than a week are compressed.
set -eu
R="redis-cli -p $KV_PORT"
out=$KV/reports/kv-report-$(date -u -d @$EVAL_TS +%Y%m%d).txt
{
  date -u -d @$EVAL_TS +%FT%TZ
  $R INFO memory | grep -E '^(used_memory_human|used_memory_peak_human|mem_fragmentation_ratio|maxmemory_human):'
  $R INFO keyspace
  $R DBSIZE
  for p in session user cart stats; do
    printf '%s %s\n' "$p" "$($R --scan --pattern "$p:*" | wc -l)"
  done
  $R --bigkeys -i 0.01 | grep -E '^(Biggest|[0-9]+ (hashs|strings|zsets))'
} > $out
ls -1 $KV/reports/kv-report-*.txt | sort | head -n -7 | xargs -r gzip -f
