#!/bin/bash
# Nightly: BGSAVE, wait for it, copy the dump under a dated, versioned name, check it,
# compress, checksum, keep the last 7.
set -eu
R="redis-cli -p $KV_PORT"
B=$KV/backup
stamp=$(date -u -d @$EVAL_TS +%Y%m%d-%H%M)
$R BGSAVE > /dev/null
for i in $(seq 100); do
  $R INFO persistence | grep -q '^rdb_bgsave_in_progress:0' && break
  sleep 0.1
done
seq_no=$(( $(cat $KV/state/backup.seq) + 1 ))
echo $seq_no > $KV/state/backup.seq
name=dump-$EVAL_HOST-$stamp.v$seq_no.rdb
cp $KV/data/dump.rdb $B/$name
redis-check-rdb $B/$name > $KV/log/check-rdb.log 2>&1
gzip -9 $B/$name
sha256sum $B/$name.gz > $B/$name.gz.sha256
ls -1t $B/dump-*.rdb.gz | tail -n +8 | while read -r old; do rm -f "$old" "$old.sha256"; done
echo "$stamp v$seq_no $(du -k $B/$name.gz | cut -f1)k" >> $KV/log/backup.log
