#!/bin/bash
# Monitoring probe: server accepts connections; now and then, connection and lag counts.
set -u
pg_isready -q -h $PGHOST -p $PGPORT -d appdb || { echo "$(date -u +%FT%TZ) not ready" >> /srv/pg/log/health.log; exit 1; }
if (( EVAL_RAND % 4 == 0 )); then
  psql -X -At -d appdb -c "select count(*) from pg_stat_activity where state <> 'idle'" > /srv/pg/run/active
fi
if (( EVAL_RAND % 9 == 0 )); then
  psql -X -At -d appdb -c "select archived_count, failed_count from pg_stat_archiver" > /srv/pg/run/archiver
fi
