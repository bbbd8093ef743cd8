#!/bin/bash
# Provision the key-value store host: Debian's redis-server running its own instance
# on port 6390 with its data in /srv/kv/data, seeded with users, sessions and counters;
# the operator's scripts under /srv/kv/bin. Runs once before day 0 (not recorded).
set -eu
KV=/srv/kv
here=$(cd "$(dirname "$0")" && pwd)
if [ -e "$KV" ] && [ ! -e "$KV/.ruleless-eval" ]; then echo "$KV exists and is not ours" >&2; exit 1; fi
[ -f "$KV/run/redis.pid" ] && kill "$(cat $KV/run/redis.pid)" 2>/dev/null && sleep 0.5 || true
rm -rf "$KV"
mkdir -p "$KV"/{bin,data,run,log,backup,reports,archive,state}
touch "$KV/.ruleless-eval"
cp "$here"/bin/* "$KV/bin/" && chmod 755 "$KV"/bin/*
cat > $KV/redis.conf <<CONF
bind 127.0.0.1
port 6390
protected-mode yes
daemonize yes
pidfile $KV/run/redis.pid
logfile $KV/log/redis.log
dir $KV/data
dbfilename dump.rdb
save ""
appendonly no
maxmemory 96mb
maxmemory-policy allkeys-lru
slowlog-log-slower-than 2000
latency-monitor-threshold 50
CONF
echo 0 > $KV/state/backup.seq
chown -R redis:redis "$KV"
chown root:redis $KV/redis.conf && chmod 640 $KV/redis.conf
runuser -u redis -- /usr/bin/redis-server $KV/redis.conf
for i in $(seq 50); do redis-cli -p 6390 PING >/dev/null 2>&1 && break; sleep 0.1; done
# Seed: 5,000 users, a few hundred sessions, last month's counters.
/usr/bin/python3 $KV/bin/gen_users.py "${EVAL_T0:-1771200000}" 0 5000 | redis-cli -p 6390 --pipe >/dev/null
redis-cli -p 6390 BGSAVE >/dev/null
