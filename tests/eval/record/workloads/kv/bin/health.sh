#!/bin/bash
# Monitoring probe: the server answers; now and then one INFO section for the dashboards.
set -u
R="redis-cli -p $KV_PORT"
[ "$($R PING)" = PONG ] || { echo "$(date -u -d @$EVAL_TS +%FT%TZ) $EVAL_HOST down" >> $KV/log/health.log; exit 1; }
case $(( EVAL_RAND % 7 )) in
  0) $R INFO memory | awk -F: '/^used_memory:/ {print $2}' > $KV/run/used_memory ;;
  1) $R INFO clients | grep -E '^(connected|blocked)_clients' > $KV/run/clients ;;
  2) $R INFO persistence | grep -E '^(rdb_last_bgsave_status|rdb_changes_since_last_save)' > $KV/run/persistence ;;
  3) $R INFO stats | grep -E '^(keyspace_hits|keyspace_misses|evicted_keys|expired_keys)' > $KV/run/stats ;;
  4) $R INFO keyspace | tail -n +2 > $KV/run/keyspace ;;
  *) ;;
esac
