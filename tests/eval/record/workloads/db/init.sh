#!/bin/bash
# Provision the database host: a PostgreSQL 15 instance in /srv/pg with WAL archiving,
# an application database with some history, and the DBA's scripts under /srv/pg/bin.
# Runs once before day 0 (not part of the recorded days).
set -eu
PG=/srv/pg
PGBIN=/usr/lib/postgresql/15/bin
here=$(cd "$(dirname "$0")" && pwd)
if [ -e "$PG" ] && [ ! -e "$PG/.ruleless-eval" ]; then echo "$PG exists and is not ours" >&2; exit 1; fi
[ -f "$PG/data/postmaster.pid" ] && runuser -u postgres -- $PGBIN/pg_ctl -D $PG/data -m fast stop >/dev/null 2>&1 || true
rm -rf "$PG"
mkdir -p "$PG"/{bin,jobs,migrations,run,log,backup,wal_archive,base,reports,tmp}
touch "$PG/.ruleless-eval"
cp "$here"/bin/* "$PG/bin/" && chmod 755 "$PG"/bin/*
chown -R postgres:postgres "$PG"
runuser -u postgres -- $PGBIN/initdb -D $PG/data -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >> $PG/data/postgresql.conf <<CONF
port = 5433
listen_addresses = ''
unix_socket_directories = '$PG/run'
shared_buffers = 32MB
wal_level = replica
archive_mode = on
archive_command = 'test ! -f $PG/wal_archive/%f && cp %p $PG/wal_archive/%f'
max_wal_size = 256MB
log_line_prefix = '%m [%p] %u@%d '
log_min_duration_statement = 500
CONF
runuser -u postgres -- $PGBIN/pg_ctl -D $PG/data -l $PG/log/server.log -w start >/dev/null
export PGHOST=$PG/run PGPORT=5433
runuser -u postgres -- $PGBIN/createdb appdb
runuser -u postgres -- $PGBIN/psql -X -q -d appdb -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE customers (id serial PRIMARY KEY, name text, region text, created timestamptz DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers, amount numeric(10,2),
                     status text, created timestamptz DEFAULT now());
CREATE TABLE events (id bigserial, kind text, payload jsonb, at timestamptz NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2026_02 PARTITION OF events FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
CREATE TABLE events_2026_03 PARTITION OF events FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE TABLE daily_sales (day date PRIMARY KEY, orders int, revenue numeric);
CREATE TABLE schema_migrations (version text PRIMARY KEY, applied timestamptz DEFAULT now());
INSERT INTO customers (name, region) SELECT 'customer ' || g, (ARRAY['eu','us','apac'])[1 + g % 3] FROM generate_series(1, 2000) g;
INSERT INTO orders (customer_id, amount, status, created)
  SELECT 1 + (random() * 1999)::int, round((random() * 300)::numeric, 2), 'paid', now() - (g || ' minutes')::interval
  FROM generate_series(1, 20000) g;
CREATE ROLE app LOGIN; CREATE ROLE reporting LOGIN;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO reporting;
SQL
cat > $PG/jobs/hourly_rollup.sql <<'SQL'
\set ON_ERROR_STOP on
INSERT INTO orders (customer_id, amount, status)
  SELECT 1 + (random() * 1999)::int, round((random() * 300)::numeric, 2),
         (ARRAY['paid','paid','paid','refunded','pending'])[1 + (random() * 4)::int]
  FROM generate_series(1, 200 + (random() * 400)::int);
INSERT INTO events (kind, payload, at)
  SELECT 'page_view', jsonb_build_object('n', g), now() - random() * interval '10 days'
  FROM generate_series(1, 300) g;
INSERT INTO daily_sales SELECT created::date, count(*), sum(amount) FROM orders
  WHERE created > now() - interval '1 day' GROUP BY 1
  ON CONFLICT (day) DO UPDATE SET orders = excluded.orders, revenue = excluded.revenue;
SQL
echo 0 > $PG/run/migration
chown -R postgres:postgres "$PG"
