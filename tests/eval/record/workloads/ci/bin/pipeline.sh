#!/bin/bash
# Poll a project's mirror; when a commit has landed that was not built yet, run its
# pipeline: clone, checkout, the repo's own ci/build.sh, archive artifacts, clean up.
set -eu
P=$1
CI=/srv/ci
M=$CI/mirrors/$P.git
last=$(cat $CI/state/$P.last)
# Cheap poll first: has anything landed on main since the last build?
[ "$(git -C $M rev-list -n 1 --before="@$EVAL_TS" main)" != "$last" ] || exit 0
git -C $M fetch -q --prune origin
next=$(git -C $M rev-list --reverse --before="@$EVAL_TS" main | grep -x -A1 "$last" | sed -n 2p)
[ -n "$next" ] || exit 0
build=$(( $(cat $CI/state/$P.build) + 1 ))
echo $build > $CI/state/$P.build
W=$CI/builds/$P-$build
git clone -q --reference $M $CI/upstream/$P.git $W
cd $W
git checkout -q $next
subject=$(git log -1 --format=%s)
release=0
if [ -f VERSION ]; then version=$(cat VERSION); else version=$(awk -F'"' '/^version/ {print $2}' pyproject.toml); fi
[ "$version" != "$(cat $CI/state/$P.version 2>/dev/null)" ] && release=1
export CI_RELEASE=$release CI_BUILD=$build CI_COMMIT=$next
if ./ci/build.sh > $CI/logs/$P-$build.log 2>&1; then status=ok; else status=failed; fi
if [ $status = ok ] && [ -d dist ]; then
  mkdir -p $CI/artifacts/$P
  for f in dist/*; do cp "$f" $CI/artifacts/$P/; done
  (cd $CI/artifacts/$P && sha256sum $(cd $W/dist && ls) >> SHA256SUMS)
  echo "$version" > $CI/state/$P.version
fi
echo "$next" > $CI/state/$P.last
echo "$(date -u -d @$EVAL_TS +%FT%TZ) $P #$build ${next:0:10} $version $status: $subject" >> $CI/logs/builds.log
cd $CI
rm -rf $W
gzip -f $CI/logs/$P-$build.log
