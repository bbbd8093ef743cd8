#!/usr/bin/env bash
# Host setup for the eBPF capture backend (README: "eBPF backend"). Idempotent: safe to
# run on every CI start; does nothing that is already done.
#
#   1. BCC's Python module and tools (Debian: python3-bpfcc, bpfcc-tools).
#   2. Kernel headers at /lib/modules/$(uname -r)/{build,source}. BCC compiles the
#      programs in bpf/ against them. When the distribution has no headers for the
#      running kernel (a custom or newer kernel), the closest ones apt offers are linked
#      instead; our programs only use tracepoint arguments and helpers, never kernel
#      struct layouts, so older headers are good enough (ENVIRONMENT.md, eBPF).
#   3. tracefs mounted at /sys/kernel/tracing (tracepoints are attached through it).
set -euo pipefail

log() { echo "setup-host: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (installs packages, mounts tracefs)"; exit 1
fi

export DEBIAN_FRONTEND=noninteractive
kver="$(uname -r)"
arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
apt_updated=0

apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  log "apt-get install $*"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

has_pkg() { apt-cache show "$1" >/dev/null 2>&1; }

# 1. BCC
if ! /usr/bin/python3 -c 'import bcc' 2>/dev/null || ! dpkg -s bpfcc-tools >/dev/null 2>&1; then
  apt_install python3-bpfcc bpfcc-tools
else
  log "BCC present ($(dpkg-query -W -f='${Version}' python3-bpfcc 2>/dev/null || echo '?'))"
fi

# 2. Kernel headers
build="/lib/modules/$kver/build"
if [ -e "$build/include/linux/kconfig.h" ] || [ -e "$build/include/generated/autoconf.h" ]; then
  log "kernel headers present at $build"
else
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  if has_pkg "linux-headers-$kver"; then
    apt_install "linux-headers-$kver"
  else
    # No headers for this exact kernel: take the newest of the distribution's, cloud
    # flavour first (what VMs run), then the generic one.
    headers_dir="$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | grep -v -- '-common' | sort -V | tail -1 || true)"
    if [ -z "$headers_dir" ]; then
      for meta in "linux-headers-cloud-$arch" "linux-headers-$arch"; do
        if has_pkg "$meta"; then apt_install "$meta"; break; fi
      done
      headers_dir="$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | grep -v -- '-common' | sort -V | tail -1 || true)"
    fi
    if [ -z "$headers_dir" ]; then
      log "no kernel headers available from apt for $kver"; exit 1
    fi
    # linux-headers-6.1.0-56-cloud-amd64 -> linux-headers-6.1.0-56-common
    version="$(basename "$headers_dir" | sed -E 's/^linux-headers-([0-9.]+-[0-9]+)-.*/\1/')"
    common="/usr/src/linux-headers-$version-common"
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$headers_dir" "$build"
    if [ -d "$common" ]; then ln -sfn "$common" "/lib/modules/$kver/source"; fi
    log "no headers for $kver: linked the closest ones, $(basename "$headers_dir")"
  fi
fi

# 3. tracefs
if ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing
  log "mounted tracefs at /sys/kernel/tracing"
fi
if [ ! -e /sys/kernel/tracing/events/syscalls/sys_enter_execve ]; then
  log "warning: syscall tracepoints missing (kernel without CONFIG_FTRACE_SYSCALLS?)"
fi
log "ok: eBPF backend prerequisites in place for $kver"
