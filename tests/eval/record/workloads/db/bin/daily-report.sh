#!/bin/bash
# Morning sales report for the business: CSV exports, compressed, kept 30 days.
set -eu
R=/srv/pg/reports
day=$(date -u -d "@$(( EVAL_TS - 86400 ))" +%Y-%m-%d)
psql -X -q -d appdb -c "\copy (select * from daily_sales order by day desc limit 31) to '$R/sales-$day.csv' csv header"
psql -X -q -d appdb -c "\copy (select region, count(*), sum(amount) from orders join customers c on c.id = customer_id group by region) to '$R/regions-$day.csv' csv header"
gzip -f $R/sales-$day.csv $R/regions-$day.csv
ls -1t $R/*.csv.gz | tail -n +61 | xargs -r rm -f
