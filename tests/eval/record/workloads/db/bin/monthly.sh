#!/bin/bash
# First of the month: create next month's partition, archive old dumps, record the control data.
set -eu
next=$(date -u -d "@$(( EVAL_TS + 32 * 86400 ))" +%Y-%m-01)
after=$(date -u -d "$next + 1 month" +%Y-%m-01)
name=events_$(date -u -d "$next" +%Y_%m)
psql -X -q -d appdb -v ON_ERROR_STOP=1 -c "CREATE TABLE IF NOT EXISTS $name PARTITION OF events FOR VALUES FROM ('$next') TO ('$after')"
/usr/lib/postgresql/15/bin/pg_controldata /srv/pg/data > /srv/pg/reports/controldata-$(date -u -d @$EVAL_TS +%Y%m).txt
tar -cf /srv/pg/backup/reports-$(date -u -d @$EVAL_TS +%Y%m).tar -C /srv/pg/reports .
du -sh /srv/pg/data /srv/pg/wal_archive /srv/pg/backup > /srv/pg/reports/disk-$(date -u -d @$EVAL_TS +%Y%m).txt
