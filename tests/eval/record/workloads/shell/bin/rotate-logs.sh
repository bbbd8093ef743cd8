#!/bin/bash
# The app's log rotation at midnight: yesterday's log compressed, the new day's log
# opened (the app writes it through the day: simulated here from the day's traffic),
# logs older than 14 days removed.
set -eu
L=/srv/app/logs
d=$(date -u -d @$EVAL_TS +%Y%m%d)
y=$(date -u -d @$(( EVAL_TS - 86400 )) +%Y%m%d)
[ -f $L/app-$y.log ] && gzip -f $L/app-$y.log
seq 1 $(( 300 + EVAL_TS / 86400 % 7 * 40 )) | awk -v d=$d -v s=$EVAL_TS 'BEGIN {srand(s)} {
  lvl = rand() < 0.04 ? "ERROR" : (rand() < 0.1 ? "WARN" : "INFO");
  printf "%s %02d:%02d:%02d %s req=%d path=/api/%s ms=%d\n", d, NR % 24, NR % 60, (NR * 7) % 60, lvl, NR, (rand() < 0.5 ? "cart" : "user"), int(rand() * 400) }' > $L/app-$d.log
chmod 640 $L/app-$d.log; chown root:alex $L/app-$d.log
ls -1 $L/app-*.log.gz 2>/dev/null | sort | head -n -14 | xargs -r rm -f
echo "$(date -u -d @$EVAL_TS +%FT%TZ) rotate $d" >> $L/audit.log
