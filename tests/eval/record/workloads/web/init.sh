#!/bin/bash
# Provision the web host: nginx serving a static site over http and https, with its
# routine scripts under /srv/www/bin. Runs once before day 0 (not part of the recorded days).
set -eu
WWW=/srv/www
here=$(cd "$(dirname "$0")" && pwd)
if [ -e "$WWW" ] && [ ! -e "$WWW/.ruleless-eval" ]; then echo "$WWW exists and is not ours" >&2; exit 1; fi
[ -f "$WWW/run/nginx.pid" ] && nginx -c "$WWW/conf/nginx.conf" -s quit 2>/dev/null && sleep 0.5 || true
[ -f "$WWW/run/fcgiwrap.pid" ] && kill -- "-$(cat "$WWW/run/fcgiwrap.pid")" 2>/dev/null || true
rm -rf "$WWW"
mkdir -p "$WWW"/{bin,cgi-bin,conf,logs,run,tls,releases,incoming,ship,archive,reports,tmp,feedback}
touch "$WWW/.ruleless-eval"
cp "$here"/bin/* "$WWW/bin/" && chmod 755 "$WWW"/bin/*
cp "$here"/cgi-bin/* "$WWW/cgi-bin/" && chmod 755 "$WWW"/cgi-bin/*
cat > "$WWW/conf/nginx.conf" <<CONF
user www-data;
worker_processes 2;
pid $WWW/run/nginx.pid;
error_log $WWW/logs/error.log warn;
events { worker_connections 256; }
http {
  include /etc/nginx/mime.types;
  access_log $WWW/logs/access.log;
  client_body_temp_path $WWW/tmp/body;
  proxy_temp_path $WWW/tmp/proxy;
  fastcgi_temp_path $WWW/tmp/fastcgi;
  uwsgi_temp_path $WWW/tmp/uwsgi;
  scgi_temp_path $WWW/tmp/scgi;
  server {
    listen 127.0.0.1:8080;
    listen 127.0.0.1:8443 ssl;
    ssl_certificate $WWW/tls/cert.pem;
    ssl_certificate_key $WWW/tls/key.pem;
    root $WWW/current;
    location = /healthz { return 200 "ok\n"; }
    location /api/ { return 200 '{"status":"ok"}'; }
    location /cgi-bin/ {
      gzip off;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $WWW\$fastcgi_script_name;
      fastcgi_pass unix:$WWW/run/fcgi/fcgiwrap.sock;
    }
  }
}
CONF
cat > "$WWW/conf/logrotate.conf" <<CONF
$WWW/logs/access.log $WWW/logs/error.log {
  size 1
  rotate 10
  compress
  delaycompress
  missingok
  notifempty
  sharedscripts
  postrotate
    [ -f $WWW/run/nginx.pid ] && kill -USR1 \$(cat $WWW/run/nginx.pid)
  endscript
}
CONF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$WWW/tls/key.pem" -out "$WWW/tls/cert.pem" -days 90 -subj "/CN=www.example.internal" 2>/dev/null
# The certificate's simulated issue day: renewals fall due 21 days after it.
echo $(( ${EVAL_T0:-1771200000} - 86400 * (3 + ${EVAL_SEED:-0} % 4) )) > "$WWW/tls/issued"
echo "1.4.0" > "$WWW/run/version"
EVAL_TS=${EVAL_T0:-1771200000} "$WWW/bin/deploy.sh" --initial >/dev/null
mkdir -p "$WWW/run/fcgi"
chown -R www-data:www-data "$WWW/logs" "$WWW/tmp" "$WWW/feedback" "$WWW/run/fcgi"
# CGI: fcgiwrap as www-data, as Debian's fcgiwrap.service runs it; nginx talks to its socket.
setsid setpriv --reuid=www-data --regid=www-data --init-groups \
  /usr/sbin/fcgiwrap -c 2 -s "unix:$WWW/run/fcgi/fcgiwrap.sock" < /dev/null > /dev/null 2>&1 &
echo $! > "$WWW/run/fcgiwrap.pid"
for _ in $(seq 50); do [ -S "$WWW/run/fcgi/fcgiwrap.sock" ] && break; sleep 0.1; done
chmod 666 "$WWW/run/fcgi/fcgiwrap.sock"
nginx -c "$WWW/conf/nginx.conf"
