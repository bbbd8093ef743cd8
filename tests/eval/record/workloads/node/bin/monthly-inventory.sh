#!/bin/bash
# First of the month: dependency and licence inventory of the project at the head of
# main (npm ls, vendored helpers and their licences), toolchain versions.
set -eu
m=$(date -u -d @$EVAL_TS +%Y%m)
out=$B/inventory/inventory-$m.txt
W=$(mktemp -d /tmp/inventory.XXXXXXXX)
git clone -q --reference $B/mirrors/app.git $B/upstream/app.git $W/app
cd $W/app
git checkout -q "$(git rev-list -n 1 --before="@$EVAL_TS" main)"
{
  echo "# app $(git describe --tags --always) $(date -u -d @$EVAL_TS +%F)"
  npm ls --all --long 2>&1 || true
  npm pkg get name version license
  node scripts/licenses.js
  find vendor -name LICENSE | sort
  sha256sum vendor/*/index.js
  echo "node $(node --version) npm $(npm --version) $(git --version)"
  dpkg-query -W -f='${Package} ${Version}\n' nodejs git tar gzip
} > $out
npm ls --all --json > $B/inventory/npm-ls-$m.json 2>/dev/null || true
cd $B
rm -rf $W
sha256sum $out $B/inventory/npm-ls-$m.json >> $B/inventory/SHA256SUMS
