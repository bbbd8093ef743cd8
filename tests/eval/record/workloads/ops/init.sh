#!/bin/bash
# Provision the ops side of a general-purpose server: Debian-style cron.{hourly,daily,
# weekly,monthly} directories run by run-parts, app logs to rotate, configs to back up,
# certificates to watch. Runs once before day 0 (not part of the recorded days).
set -eu
OPS=/srv/ops
here=$(cd "$(dirname "$0")" && pwd)
if [ -e "$OPS" ] && [ ! -e "$OPS/.ruleless-eval" ]; then echo "$OPS exists and is not ours" >&2; exit 1; fi
rm -rf "$OPS"
mkdir -p "$OPS"/{bin,etc/app,log/app,tmp,backup,remote,certs,reports,state}
touch "$OPS/.ruleless-eval"
for d in bin cron.hourly cron.daily cron.weekly cron.monthly; do
  mkdir -p "$OPS/$d"; cp "$here/$d"/* "$OPS/$d/"; chmod 755 "$OPS/$d"/*
done
cp /etc/hostname /etc/hosts /etc/resolv.conf /etc/passwd /etc/group "$OPS/etc/" 2>/dev/null || true
for i in 1 2 3; do printf 'listen=%d\nworkers=%d\n' $((8000 + i)) $((i * 2)) > "$OPS/etc/app/service$i.conf"; done
for name in app worker scheduler; do : > "$OPS/log/app/$name.log"; done
cat > "$OPS/etc/logrotate.conf" <<CONF
$OPS/log/app/*.log {
  size 1
  rotate 7
  compress
  missingok
  notifempty
  create 0640 root adm
}
CONF
# Certificates with staggered lifetimes; cert-check warns 14 days before expiry.
for name in api internal-ca vpn mail; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -keyout "$OPS/certs/$name.key" -out "$OPS/certs/$name.pem" -subj "/CN=$name.example.internal" 2>/dev/null
done
t0=${EVAL_T0:-1771200000}
printf 'api %d\ninternal-ca %d\nvpn %d\nmail %d\n' $((t0 + 86400 * 40)) $((t0 + 86400 * 400)) $((t0 + 86400 * 19)) $((t0 + 86400 * 75)) > "$OPS/certs/expiry"
sha256sum /usr/bin/ssh* /usr/bin/sudo /usr/bin/passwd /usr/sbin/cron 2>/dev/null > "$OPS/state/integrity.sha256" || true
