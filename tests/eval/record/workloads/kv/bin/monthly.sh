#!/bin/bash
# First of the month: version and configuration snapshot, last month's reports archived.
set -eu
R="redis-cli -p $KV_PORT"
prev=$(date -u -d "@$(( EVAL_TS - 86400 ))" +%Y%m)
snap=$KV/archive/config-$prev.txt
{
  redis-server --version
  dpkg-query -W -f='${Package} ${Version}\n' redis-server redis-tools
  $R INFO server | grep -E '^(redis_version|uptime_in_days|executable|config_file):'
  $R CONFIG GET '*'
} > $snap
sha256sum $snap > $snap.sha256
cd $KV/reports
tar -cJf $KV/archive/reports-$prev.tar.xz $(ls | grep -E -- "-$prev")
ls | grep -E -- "-$prev" | xargs -r rm -f
$R MEMORY PURGE > /dev/null
chown -R redis:redis $KV/archive
