#!/bin/bash
# Nightly: a prerelease build of the head of main (npm version prerelease with the
# date), packed in mktemp scratch space, kept for a week.
set -eu
d=$(date -u -d @$EVAL_TS +%Y%m%d)
head=$(git -C $B/mirrors/app.git rev-list -n 1 --before="@$EVAL_TS" main)
W=$(mktemp -d /tmp/nightly.XXXXXXXX)
git clone -q --reference $B/mirrors/app.git $B/upstream/app.git $W/app
cd $W/app
git checkout -q $head
prev=$(git tag -l 'v*' --sort=-v:refname | head -n 1)
npm pkg set version=${prev#v}
npm version prerelease --preid nightly.$d --no-git-tag-version > /dev/null
node build.js > /dev/null
node --test test/ > $B/logs/nightly-$d.log 2>&1 || echo "nightly tests failed" >> $B/logs/nightly-$d.log
npm pack --silent --pack-destination $W > /dev/null
f=$(ls $W/app-*.tgz)
sha256sum $f | sed "s|$W/||" >> $B/nightly/SHA256SUMS
mv $f $B/nightly/
cd $B
rm -rf $W
ls -1t $B/nightly/app-*.tgz | tail -n +8 | xargs -r rm -f
gzip -f $B/logs/nightly-$d.log
