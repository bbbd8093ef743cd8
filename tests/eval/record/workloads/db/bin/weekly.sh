#!/bin/bash
# Sunday: physical base backup (keep 2), globals dump, reindex the hot table.
set -eu
week=$(date -u -d @$EVAL_TS +%G-W%V)
dest=/srv/pg/base/$week
pg_basebackup -D $dest -Ft -z -X fetch -c fast -l "weekly $week"
tar -xzOf $dest/base.tar.gz backup_label | awk '/START WAL LOCATION/ {gsub(/[()]/, "", $6); print $6}' > $dest/backup_label.wal
ls -1dt /srv/pg/base/*/ | tail -n +3 | xargs -r rm -rf
pg_dumpall --globals-only -f /srv/pg/backup/globals-$week.sql
reindexdb -q -d appdb -t orders
