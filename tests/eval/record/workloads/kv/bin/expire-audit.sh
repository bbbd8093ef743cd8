#!/bin/bash
# Audit keys that should expire but do not: scan sessions and carts, check their TTLs,
# diff against the previous audit. Works in scratch files from mktemp.
set -eu
R="redis-cli -p $KV_PORT"
work=$(mktemp -d /tmp/kvaudit.XXXXXXXXXX)
keys=$(mktemp)
ttls=$(mktemp -p "$work" ttl.XXXXXXXX)
noexp=$(mktemp --suffix=.txt)
$R --scan --pattern 'session:*' > "$keys"
$R --scan --pattern 'cart:*' >> "$keys"
sort -u -o "$keys" "$keys"
head -n 200 "$keys" | sed 's/^/TTL /' | $R > "$ttls"
paste -d' ' <(head -n 200 "$keys") "$ttls" | awk '$2 == -1 {print $1}' > "$noexp"
prev=$KV/state/noexpire.last
touch "$prev"
new=$(mktemp -p "$work")
comm -13 "$prev" "$noexp" > "$new"
if [ -s "$new" ]; then
  cp "$new" "$KV/reports/noexpire-$(date -u -d @$EVAL_TS +%Y%m%d-%H%M).txt"
fi
cp "$noexp" "$prev"
wc -l "$keys" "$noexp" | tail -n 1 > $KV/run/audit
rm -rf "$work" "$keys" "$noexp"
