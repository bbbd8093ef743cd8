#!/bin/bash
# Nightly cleanup: stale work dirs and scratch space, keep the last 25 dist tarballs,
# cap the build logs, verify npm's cache, disk usage for the dashboards.
set -eu
find $B/work -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
find /tmp -maxdepth 1 -user build -name 'tmp.*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
ls -1t $B/artifacts/app/app-dist-*-b*.tar.gz 2>/dev/null | tail -n +26 | xargs -r rm -f
find $B/logs -name 'app-*.log.gz' | sort -V | head -n -150 | xargs -r rm -f
npm cache verify > $B/state/npm-cache.txt 2>&1
du -sh $B/artifacts $B/mirrors $B/logs $B/nightly > $B/state/disk.txt
