#!/usr/bin/env bash
# Install what the eval workload drivers run (real software, Debian packages) and the
# service users they run as. Idempotent; needs root. Called by record.py before recording.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
  nginx-light fcgiwrap logrotate rsync curl openssl ca-certificates  # web
  postgresql postgresql-client sqlite3                          # db
  git make gcc libc6-dev binutils python3 python3-pytest python3-pip python3-setuptools python3-wheel python3-venv  # ci
  procps iproute2 lsof findutils coreutils tar gzip xz-utils bzip2 apt-utils  # ops
  gawk jq python3-pandas                                      # data
  redis-server redis-tools                                    # kv
  sudo bash-completion less file                              # shell (node: nodejs/npm v20 are preinstalled)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Debian packages may start their services on install where an init system exists;
# the drivers run their own instances on their own ports and directories.
for u in ci etl build alex monitor; do
  id -u "$u" >/dev/null 2>&1 || useradd --system --create-home --shell /bin/bash "$u"
done

# csv -> parquet in the data workload: pyarrow in a venv of the etl user (PyPI).
if [ "$(readlink -f /opt/etl/venv/bin/python)" != "$(readlink -f /usr/bin/python3)" ] || ! /opt/etl/venv/bin/python -c 'import pyarrow' 2>/dev/null; then
  mkdir -p /opt/etl
  /usr/bin/python3 -m venv /opt/etl/venv
  /opt/etl/venv/bin/pip install -q --disable-pip-version-check 'pyarrow>=14'
fi
echo "eval setup: ok"
