#!/bin/bash
# Nightly: rotate nginx logs, summarise yesterday, ship the compressed log to the archive.
set -eu
WWW=/srv/www
stamp=$(date -u -d "@$(( EVAL_TS - 86400 ))" +%Y%m%d)
/usr/sbin/logrotate -s $WWW/run/logrotate.state $WWW/conf/logrotate.conf
cd $WWW/logs
[ -s access.log.1 ] || exit 0
awk '{print $9}' access.log.1 | sort | uniq -c | sort -rn > $WWW/reports/status-$stamp.txt
awk '{print $7}' access.log.1 | sort | uniq -c | sort -rn | head -n 20 > $WWW/reports/top-$stamp.txt
errors=$(awk '$9 >= 500' access.log.1 | wc -l)
echo "$stamp requests=$(wc -l < access.log.1) 5xx=$errors" >> $WWW/reports/daily.log
gzip -c access.log.1 > $WWW/ship/access-$EVAL_HOST-$stamp.log.gz
cd $WWW/ship
sha256sum access-*-$stamp.log.gz > access-$stamp.sha256
rsync -a --remove-source-files $WWW/ship/ $WWW/archive/
