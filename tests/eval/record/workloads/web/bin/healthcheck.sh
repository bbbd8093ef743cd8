#!/bin/bash
# Monitoring probe: the site answers on http (and now and then on https).
set -u
WWW=/srv/www
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 http://127.0.0.1:8080/healthz)
if [ "$code" != 200 ]; then
  echo "$(date -u +%FT%TZ) healthz http=$code" >> $WWW/logs/health.log
  exit 1
fi
if (( EVAL_RAND % 6 == 0 )); then
  curl -sk -o /dev/null --max-time 3 https://127.0.0.1:8443/healthz || echo "tls probe failed" >> $WWW/logs/health.log
fi
if (( EVAL_RAND % 11 == 0 )); then
  pgrep -x nginx >/dev/null || echo "nginx not running" >> $WWW/logs/health.log
fi
