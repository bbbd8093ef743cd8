#!/bin/bash
# Nightly: analyze, vacuum the busy tables, record bloat and slow queries.
set -eu
R=/srv/pg/reports
day=$(date -u -d @$EVAL_TS +%Y%m%d)
vacuumdb -q -z -d appdb -t orders -t events
psql -X -At -F, -d appdb -c "select relname, n_live_tup, n_dead_tup, last_autovacuum from pg_stat_user_tables order by n_dead_tup desc" > $R/bloat-$day.csv
grep -h "duration:" /srv/pg/log/server.log | tail -n 20 > $R/slow-$day.txt || true
psql -X -At -d appdb -c "select pg_size_pretty(pg_database_size('appdb'))" >> $R/size.log
