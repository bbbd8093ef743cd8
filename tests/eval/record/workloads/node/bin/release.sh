#!/bin/bash
# Release train: every 7-10 days (weekday afternoons) the head of main is released:
# version bumped with npm on a release commit, tagged, pushed; npm pack, dist tarball,
# checksums and release notes, staged in mktemp scratch space.
set -eu
last_day=$(cat $B/state/release.day)
gap=$(( 7 + EVAL_RAND % 4 ))
(( EVAL_DAY - last_day >= gap )) || exit 0
R=$B/release/app
cd $R
git fetch -q --tags origin
head=$(git rev-list -n 1 --before="@$EVAL_TS" origin/main)
prev=$(git tag -l 'v*' --sort=-v:refname | head -n 1)
git checkout -q --detach $head
npm pkg set version=${prev#v}
npm version patch --no-git-tag-version > /dev/null
ver=$(node -p "require('./package.json').version")
rel=$(( $(cat $B/state/release.seq) + 1 ))
rid=r$rel-$(cat $B/state/app.build)
git commit -q -am "release v$ver ($rid)"
git tag -a v$ver -m "release $ver ($rid)"
git push -q origin v$ver
node build.js > /dev/null
node --test test/ > $B/logs/release-$rid.log 2>&1
stage=$(mktemp -d /tmp/release.XXXXXXXXXX)
notes=$(mktemp -p $stage notes.XXXXXX)
sums=$(mktemp)
npm pack --silent --pack-destination $stage > /dev/null
tar -tzf $stage/app-$ver.tgz > $stage/contents.txt
grep -q 'package/dist/app.js' $stage/contents.txt
git log --format='- %s' $prev..v$ver > $notes
tar -czf $stage/app-dist-$ver-$rid.tar.gz -C dist .
cd $stage
cp app-$ver.tgz app-$ver-$rid.tgz
sha256sum app-$ver-$rid.tgz app-dist-$ver-$rid.tar.gz > $sums
sha256sum -c --quiet $sums
cp app-$ver-$rid.tgz app-dist-$ver-$rid.tar.gz $B/artifacts/app/
cp $notes $B/artifacts/app/RELEASE-NOTES-$ver.md
cat $sums >> $B/artifacts/app/SHA256SUMS
cd $B
rm -rf $stage $sums
git -C $R checkout -q --detach origin/main
echo $rel > $B/state/release.seq
echo $EVAL_DAY > $B/state/release.day
echo "$(date -u -d @$EVAL_TS +%FT%TZ) released $ver $rid" >> $B/logs/releases.log
