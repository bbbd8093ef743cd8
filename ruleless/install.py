"""`ruleless install-agent` / `uninstall-agent`: the agent on a plain host, as a hardened
systemd service (issue 18).

What it writes, under ``root`` (``--prefix``, default ``/``; paths inside the files are
those of the target system, as with ``DESTDIR``):

- ``etc/ruleless/agent.toml`` (0600): the agent's settings, in the one settings format
  (``ruleless agent --config``; see ruleless/settings.py);
- ``etc/systemd/system/ruleless-agent.service``: the unit;
- ``etc/ruleless/agent.install.json``: the manifest — every file written with its
  SHA-256, and the directories created — so uninstalling removes exactly that.

The unit gets the capabilities of the chosen backend and no others (``auto`` may fall
back to any backend, so it gets all of theirs). With ``root`` = ``/`` and systemd running,
the unit is enabled and started; otherwise nothing outside ``root`` is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ruleless.settings import AgentSettings, load_settings
from schemas.errors import ConfigError

UNIT_NAME = "ruleless-agent.service"
CONFIG = Path("etc/ruleless/agent.toml")
UNIT = Path("etc/systemd/system") / UNIT_NAME
MANIFEST = Path("etc/ruleless/agent.install.json")
STATE_DIR = "/var/lib/ruleless"  # systemd's StateDirectory=ruleless: the agent's spool lives here

# What each backend needs (README "Host agent: capture backends"):
# - reading other users' /proc/PID/{exe,fd,environ} and cgroup/container files: ptrace
#   access and DAC read (root without them cannot read another process's fd table);
# - the proc connector: CAP_NET_ADMIN; its reader processes run SCHED_FIFO: CAP_SYS_NICE;
# - BPF programs on tracepoints: CAP_BPF and CAP_PERFMON (Linux >= 5.8); older kernels
#   only know CAP_SYS_ADMIN for both, so it is added there and only there.
PROC_CAPS = ("CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE")
NETLINK_CAPS = (*PROC_CAPS, "CAP_NET_ADMIN", "CAP_SYS_NICE")
EBPF_CAPS = (*PROC_CAPS, "CAP_BPF", "CAP_PERFMON")
OLD_KERNEL_EBPF_CAPS = ("CAP_SYS_ADMIN",)


@dataclass
class Result:
    """What an install or uninstall did, for the CLI to print."""

    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # edited since written: left in place
    systemd: list[str] = field(default_factory=list)  # systemctl commands run
    notes: list[str] = field(default_factory=list)


def capabilities(backend: str, kernel: str | None = None) -> list[str]:
    """The capabilities the agent needs for ``backend`` on ``kernel`` (default: this one)."""
    wanted: set[str] = set(PROC_CAPS)
    if backend in ("netlink", "auto"):
        wanted |= set(NETLINK_CAPS)
    if backend in ("ebpf", "auto"):
        wanted |= set(EBPF_CAPS)
        if _kernel_version(kernel or platform.release()) < (5, 8):
            wanted |= set(OLD_KERNEL_EBPF_CAPS)
    return sorted(wanted)


def _kernel_version(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def config_text(org: str, workload: str, backend: str, kafka: str | None) -> str:
    """The agent's TOML settings (validated by the settings model before use)."""
    lines = [
        f"# Written by `ruleless install-agent` on {time.strftime('%Y-%m-%d')}; `ruleless uninstall-agent` removes it.",
        "# Same format as any ruleless --config file: see `ruleless config show --config THIS`.",
        f"data_dir = {_toml(STATE_DIR)}",
        "",
    ]
    if kafka:
        lines += ["[kafka]", f"bootstrap = {_toml(kafka)}", ""]
    lines += ["[agent]", f"org_id = {_toml(org)}", f"workload = {_toml(workload)}", f"backend = {_toml(backend)}", ""]
    return "\n".join(lines)


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def unit_text(executable: str, backend: str, kernel: str | None = None) -> str:
    """The hardened systemd unit that runs ``executable agent --config /etc/...``."""
    caps = " ".join(capabilities(backend, kernel))
    ebpf = backend in ("ebpf", "auto")
    realtime = backend in ("netlink", "auto")
    return f"""\
# Written by `ruleless install-agent`; `ruleless uninstall-agent` removes it.
[Unit]
Description=ruleless host agent (process events to Kafka)
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=10

[Service]
Type=simple
ExecStart={executable} agent --config /{CONFIG}
Restart=always
RestartSec=5
# The agent flushes its output for up to 30 s on SIGTERM; what is left stays spooled.
TimeoutStopSec=45
Environment=PYTHONUNBUFFERED=1
StateDirectory=ruleless
StateDirectoryMode=0700
WorkingDirectory={STATE_DIR}
UMask=0077
MemoryMax=1G
# Root, but with only these capabilities (backend {backend}).
CapabilityBoundingSet={caps}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
# BCC compiles against the kernel headers under /lib/modules, which this would hide.
ProtectKernelModules={"no" if ebpf else "yes"}
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictSUIDSGID=yes
# The netlink readers run SCHED_FIFO so a process cannot exit before it is read.
RestrictRealtime={"no" if realtime else "yes"}
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
# (Not MemoryDenyWriteExecute: ctypes callbacks, which BCC's buffer polling uses, need it off.)
SystemCallFilter=~@clock @cpu-emulation @module @mount @obsolete @raw-io @reboot @swap
{"# Kernels before 5.11 charge BPF maps to locked memory." + chr(10) + "LimitMEMLOCK=infinity" + chr(10) if ebpf else ""}
[Install]
WantedBy=multi-user.target
"""


def default_executable() -> str:
    """The `ruleless` of the Python running this (the virtualenv or system install)."""
    beside = Path(sys.executable).parent / "ruleless"
    found = str(beside) if beside.exists() else shutil.which("ruleless")
    if not found:
        raise ConfigError("cannot find the `ruleless` executable to run from the unit")
    return str(Path(found).absolute())


def install_agent(
    org: str, workload: str, *, kafka: str | None = None, backend: str = "auto",
    root: str | Path = "/", executable: str | None = None, systemd: bool | None = None,
) -> Result:  # fmt: skip
    """Write the config, the unit and the manifest under ``root``; enable and start the
    unit when ``systemd`` (default: ``root`` is ``/`` and systemd is running).
    Raises ConfigError for settings the agent would refuse, or for a file in the way
    that an earlier install did not write."""
    _check(org, workload, backend, kafka)
    root = Path(root)
    result = Result()
    owned = {Path(p) for p in _read_manifest(root).get("files", {})}
    files = {CONFIG: (config_text(org, workload, backend, kafka), 0o600),
             UNIT: (unit_text(executable or default_executable(), backend), 0o644)}  # fmt: skip
    for rel in files:
        if (root / rel).exists() and rel not in owned:
            raise ConfigError(f"{root / rel} exists and was not written by install-agent: move it away first")
    created = _make_dirs(root, [rel.parent for rel in [*files, MANIFEST]])
    hashes: dict[str, str] = {}
    for rel, (text, mode) in files.items():
        _write(root / rel, text, mode)
        hashes[str(rel)] = _sha256(root / rel)
        result.written.append(root / rel)
    previous = _read_manifest(root).get("dirs", [])
    manifest = {"files": hashes, "dirs": sorted(set(previous) | {str(d) for d in created}), "unit": UNIT_NAME}
    _write(root / MANIFEST, json.dumps(manifest, indent=2) + "\n", 0o600)
    result.written.append(root / MANIFEST)
    if systemd if systemd is not None else _systemd_running(root):
        result.systemd += _systemctl(["daemon-reload"], ["enable", "--now", UNIT_NAME])
    else:
        result.notes.append(f"systemd not used (root {root}): start it with `systemctl enable --now {UNIT_NAME}` on the target")
    return result


def uninstall_agent(root: str | Path = "/", systemd: bool | None = None) -> Result:
    """Stop and disable the unit (when systemd runs), remove every file of the manifest
    that is unchanged since it was written, and the directories the install created
    if empty. Edited files are kept and listed. The agent's data (spool) stays."""
    root = Path(root)
    manifest = _read_manifest(root)
    if not manifest:
        raise ConfigError(f"no agent installed under {root} (no {root / MANIFEST})")
    result = Result()
    if systemd if systemd is not None else _systemd_running(root):
        result.systemd += _systemctl(["disable", "--now", manifest.get("unit", UNIT_NAME)])
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.exists():
            continue
        if _sha256(path) != digest:
            result.kept.append(path)
            continue
        path.unlink()
        result.removed.append(path)
    (root / MANIFEST).unlink()
    result.removed.append(root / MANIFEST)
    for rel in sorted(manifest.get("dirs", []), key=lambda d: -len(Path(d).parts)):
        try:
            (root / rel).rmdir()
            result.removed.append(root / rel)
        except OSError:  # not empty (kept files, someone else's): leave it
            pass
    if result.systemd:
        result.systemd += _systemctl(["daemon-reload"])
    result.notes.append(f"the agent's data under {STATE_DIR} (spool) is left in place")
    return result


def _check(org: str, workload: str, backend: str, kafka: str | None) -> None:
    try:
        AgentSettings(org_id=org, workload=workload, backend=backend)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"invalid agent settings: {exc}") from None
    if kafka is not None:
        load_settings(kafka={"bootstrap": kafka})


def _make_dirs(root: Path, dirs: list[Path]) -> list[Path]:
    """Create ``dirs`` (relative to ``root``) and their parents; return those created."""
    root.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    for rel in dirs:
        missing = [p for p in [rel, *rel.parents] if str(p) != "." and not (root / p).exists()]
        for p in reversed(missing):
            (root / p).mkdir()
            os.chmod(root / p, 0o755)  # (whatever the umask: systemd reads the unit as any user)
            created.append(p)
    return created


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)  # (the process umask must not narrow what the unit file needs)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(root: Path) -> dict:  # type: ignore[type-arg]
    path = root / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def _systemd_running(root: Path) -> bool:
    return root.resolve() == Path("/") and Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _systemctl(*commands: list[str]) -> list[str]:
    done: list[str] = []
    for args in commands:
        cmd = ["systemctl", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise ConfigError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
        done.append(" ".join(cmd))
    return done
