#!/bin/bash
# Sunday: a week of archived logs into a traffic report, then prune the archive.
set -eu
WWW=/srv/www
week=$(date -u -d @$EVAL_TS +%G-W%V)
cd $WWW/archive
ls access-*.log.gz >/dev/null 2>&1 || exit 0
zcat $(ls -1 access-*.log.gz | tail -n 7) | awk '{split($4, t, ":"); print t[2]}' | sort | uniq -c > $WWW/reports/hourly-$week.txt
zcat $(ls -1 access-*.log.gz | tail -n 7) | awk '{print $1}' | sort -u | wc -l > $WWW/reports/visitors-$week.txt
tar -czf $WWW/archive/reports-$week.tar.gz -C $WWW/reports .
ls -1 access-*.log.gz | head -n -28 | xargs -r rm -f
