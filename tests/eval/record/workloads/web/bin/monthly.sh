#!/bin/bash
# First of the month: new DH parameters, archive last month's reports, record versions.
set -eu
WWW=/srv/www
month=$(date -u -d "@$(( EVAL_TS - 86400 ))" +%Y-%m)
openssl dhparam -dsaparam -out $WWW/tls/dhparam.pem 2048 2>/dev/null
tar -cJf $WWW/archive/reports-$month.tar.xz -C $WWW/reports .
find $WWW/reports -type f -name '*.txt' -delete
{ nginx -v 2>&1; openssl version; uname -r; } > $WWW/reports/inventory-$month.txt
