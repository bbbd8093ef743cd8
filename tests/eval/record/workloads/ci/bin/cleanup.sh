#!/bin/bash
# Nightly: remove stale build dirs, keep the last 25 artifacts per project, compress logs.
set -eu
CI=/srv/ci
find $CI/builds -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
for d in $CI/artifacts/*/; do
  ls -1t "$d" | grep -v SHA256SUMS | tail -n +26 | sed "s|^|$d|" | xargs -r rm -f
done
find $CI/logs -name '*.log.gz' | sort -V | head -n -200 | xargs -r rm -f
du -sh $CI/artifacts $CI/mirrors $CI/logs > $CI/state/disk.txt
