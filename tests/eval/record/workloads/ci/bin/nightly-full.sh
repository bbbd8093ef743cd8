#!/bin/bash
# Saturday: full sanitizer build of libkv at the head of main, mirror maintenance.
set -eu
CI=/srv/ci
W=$CI/builds/nightly-$(date -u -d @$EVAL_TS +%Y%m%d)
head=$(git -C $CI/mirrors/libkv.git rev-list -n 1 --before="@$EVAL_TS" main)
git clone -q $CI/mirrors/libkv.git $W
cd $W
git checkout -q $head
make -j2 CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer" test > $CI/logs/nightly.log 2>&1
cd $CI
rm -rf $W
for m in $CI/mirrors/*.git; do
  git -C $m gc --auto --quiet
  git -C $m fsck --no-progress --connectivity-only > /dev/null
done
