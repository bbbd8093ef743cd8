#!/bin/bash
# A release ships a schema migration: write the next file, apply it in a transaction.
set -eu
M=/srv/pg/migrations
n=$(( $(cat /srv/pg/run/migration) + 1 ))
file=$M/$(printf '%04d' $n)_release_$(date -u -d @$EVAL_TS +%Y%m%d).sql
col="extra_$n"
cat > $file <<SQL
BEGIN;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS $col text;
CREATE INDEX IF NOT EXISTS orders_${col}_idx ON orders ($col);
INSERT INTO schema_migrations (version) VALUES ('$(basename $file .sql)');
COMMIT;
SQL
psql -X -q -d appdb -v ON_ERROR_STOP=1 -1 -f $file
echo $n > /srv/pg/run/migration
