#!/bin/bash
# Nightly logical backup of appdb: dump, verify, checksum, rotate (keep 7), switch WAL
# so the archive is current, and clean WAL that no base backup needs.
set -eu
B=/srv/pg/backup
stamp=$(date -u -d @$EVAL_TS +%Y%m%d-%H%M)
pg_dump -Fc -Z6 -d appdb -f $B/appdb-$stamp.dump.partial
pg_restore --list $B/appdb-$stamp.dump.partial | grep -c "TABLE DATA" > /dev/null
mv $B/appdb-$stamp.dump.partial $B/appdb-$stamp.dump
sha256sum $B/appdb-$stamp.dump > $B/appdb-$stamp.dump.sha256
ls -1t $B/appdb-*.dump | tail -n +8 | while read -r old; do rm -f "$old" "$old.sha256"; done
psql -X -q -At -d appdb -c "select pg_switch_wal()" > /dev/null
oldest=$(ls -1 /srv/pg/base/*/backup_label.wal 2>/dev/null | head -n 1 || true)
if [ -n "$oldest" ]; then
  pg_archivecleanup /srv/pg/wal_archive "$(cat "$oldest")"
fi
echo "$stamp $(du -k $B/appdb-$stamp.dump | cut -f1)k" >> /srv/pg/log/backup.log
