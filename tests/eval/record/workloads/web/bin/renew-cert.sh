#!/bin/bash
# certbot-style renewal: check the certificate every day, renew it 21 days after issue,
# then reload nginx. Dates are the host's calendar (EVAL_TS), kept in tls/issued.
set -eu
TLS=/srv/www/tls
openssl x509 -noout -subject -enddate -in $TLS/cert.pem > $TLS/status.txt
issued=$(cat $TLS/issued)
age_days=$(( (EVAL_TS - issued) / 86400 ))
if (( age_days < 21 )); then
  echo "cert ok, age ${age_days}d" >> $TLS/renew.log
  exit 0
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout $TLS/key.new -out $TLS/cert.new -days 90 -subj "/CN=www.example.internal" 2>/dev/null
openssl x509 -noout -checkend 86400 -in $TLS/cert.new
cp $TLS/cert.pem $TLS/cert.$(date -u -d @$issued +%Y%m%d).pem
mv $TLS/cert.new $TLS/cert.pem
mv $TLS/key.new $TLS/key.pem
chmod 600 $TLS/key.pem
echo "$EVAL_TS" > $TLS/issued
nginx -t -q -c /srv/www/conf/nginx.conf && nginx -s reload -c /srv/www/conf/nginx.conf
echo "renewed on $EVAL_DATE" >> $TLS/renew.log
