#!/bin/bash
# First of the month: toolchain inventory for the audit trail.
set -eu
out=/srv/ci/state/toolchain-$(date -u -d @$EVAL_TS +%Y%m).txt
{
  gcc --version | head -n 1
  make --version | head -n 1
  git --version
  python3 --version
  python3 -m pip list --format=freeze --disable-pip-version-check
} > $out 2>&1
python3 -m pip check --disable-pip-version-check >> $out 2>&1 || true
ldd /usr/bin/git | awk '{print $1}' | sort > /srv/ci/state/git-libs.txt
