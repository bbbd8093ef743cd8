#!/bin/bash
# Stop the database host's PostgreSQL.
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /srv/pg/data -m fast stop >/dev/null 2>&1 || true
