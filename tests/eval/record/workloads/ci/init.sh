#!/bin/bash
# Provision the CI runner host: upstream repositories with their dated history, the
# runner's mirrors and state, its scripts under /srv/ci/bin. Runs once before day 0.
set -eu
CI=/srv/ci
here=$(cd "$(dirname "$0")" && pwd)
if [ -e "$CI" ] && [ ! -e "$CI/.ruleless-eval" ]; then echo "$CI exists and is not ours" >&2; exit 1; fi
rm -rf "$CI"
mkdir -p "$CI"/{bin,upstream,mirrors,builds,artifacts,state,logs,cache}
touch "$CI/.ruleless-eval"
cp "$here"/bin/* "$CI/bin/" && chmod 755 "$CI"/bin/*
/usr/bin/python3 "$here/gen_history.py" "$CI/upstream" "${EVAL_T0:-1771200000}" "${EVAL_DAYS:-24}" "${EVAL_SEED:-0}"
for p in libkv pyutil ops-config; do
  git clone -q --mirror "$CI/upstream/$p.git" "$CI/mirrors/$p.git"
  # The runner starts from what was already built before the recorded period.
  git -C "$CI/mirrors/$p.git" rev-list -n 1 --before="@${EVAL_T0:-1771200000}" main > "$CI/state/$p.last"
  echo $(( 100 + ${#p} * 7 )) > "$CI/state/$p.build"
done
chown -R ci:ci "$CI"
