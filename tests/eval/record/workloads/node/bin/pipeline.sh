#!/bin/bash
# Poll the mirror; when a commit has landed that was not built yet, run its pipeline:
# clone, checkout, lint, build, test, size check (once the project has one), archive
# dist with its checksum, clean up.
set -eu
M=$B/mirrors/app.git
last=$(cat $B/state/app.last)
[ "$(git -C $M rev-list -n 1 --before="@$EVAL_TS" main)" != "$last" ] || exit 0
git -C $M fetch -q --prune origin
next=$(git -C $M rev-list --reverse --before="@$EVAL_TS" main | grep -x -A1 "$last" | sed -n 2p)
[ -n "$next" ] || exit 0
build=$(( $(cat $B/state/app.build) + 1 ))
echo $build > $B/state/app.build
W=$B/work/app-$build
log=$B/logs/app-$build.log
git clone -q --reference $M $B/upstream/app.git $W
cd $W
git checkout -q $next
subject=$(git log -1 --format=%s)
status=ok
{
  npm run -s lint && node build.js && node --test test/ || status=failed
  if [ $status = ok ] && grep -q '"size"' package.json; then npm run -s size || status=failed; fi
} > $log 2>&1
if [ $status = ok ]; then
  ver=$(node -p "require('./package.json').version")
  out=$B/artifacts/app/app-dist-$ver-b$build-${next:0:8}.tar.gz
  tar -czf $out -C dist .
  (cd $B/artifacts/app && sha256sum $(basename $out) >> SHA256SUMS)
fi
echo "$next" > $B/state/app.last
echo "$(date -u -d @$EVAL_TS +%FT%TZ) app #$build ${next:0:10} $status: $subject" >> $B/logs/builds.log
cd $B
rm -rf $W
gzip -f $log
