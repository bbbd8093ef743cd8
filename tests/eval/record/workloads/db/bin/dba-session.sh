#!/bin/bash
# The DBA looks around: a few read-only commands, different each time.
set -u
cmds=(
  "psql -X -d appdb -c 'select pid, usename, state, query from pg_stat_activity'"
  "psql -X -d appdb -c 'select * from pg_locks where not granted'"
  "psql -X -d appdb -c '\\dt+'"
  "psql -X -d appdb -c 'select * from pg_stat_archiver'"
  "tail -n 100 /srv/pg/log/server.log"
  "ps -fu postgres"
  "df -h /srv/pg"
  "du -sh /srv/pg/wal_archive"
  "ls -lh /srv/pg/backup"
  "/usr/lib/postgresql/15/bin/pg_controldata /srv/pg/data"
  "psql -X -d appdb -c 'select relname, pg_size_pretty(pg_total_relation_size(relid)) from pg_statio_user_tables'"
  "grep -c ERROR /srv/pg/log/server.log"
)
n=$(( 2 + EVAL_RAND % 4 ))
for i in $(shuf -i 0-$(( ${#cmds[@]} - 1 )) -n $n --random-source=<(yes $EVAL_RAND)); do
  eval "${cmds[$i]}" > /dev/null 2>&1 || true
done
