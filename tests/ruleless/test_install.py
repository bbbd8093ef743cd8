"""ruleless/install.py: `ruleless install-agent` / `uninstall-agent` in a throwaway root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ruleless.install import CONFIG, MANIFEST, UNIT, capabilities, unit_text
from ruleless.settings import load_settings
from schemas.events import decode
from tests.processes import RULELESS


def ruleless(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RULELESS_")}
    return subprocess.run([RULELESS, *args], capture_output=True, text=True, env={**clean, **(env or {})}, timeout=120)


def install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = ruleless("install-agent", "--org", "acme", "--workload", "web-01", "--prefix", str(root), *extra)
    assert done.returncode == 0, done.stderr
    return done


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_install_writes_config_unit_and_manifest_and_uninstall_removes_exactly_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")  # someone else's
    out = install(root, "--kafka", "k1:9092,k2:9092", "--backend", "netlink").stdout
    assert "systemd not used" in out
    manifest = json.loads((root / MANIFEST).read_text())
    assert set(manifest["files"]) == {str(CONFIG), str(UNIT)}
    assert (root / CONFIG).stat().st_mode & 0o777 == 0o600
    assert (root / UNIT).stat().st_mode & 0o777 == 0o644

    settings = load_settings(root / CONFIG)  # the one settings model reads it
    assert (settings.agent.org_id, settings.agent.workload, settings.agent.backend) == ("acme", "web-01", "netlink")
    assert settings.kafka.bootstrap == "k1:9092,k2:9092"

    unit = unit_settings(root / UNIT)
    assert unit["ExecStart"] == [f"{RULELESS} agent --config /etc/ruleless/agent.toml"]
    assert unit["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH CAP_NET_ADMIN CAP_SYS_NICE CAP_SYS_PTRACE"]
    for key, value in [("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("Restart", "always"),
                       ("ProtectKernelModules", "yes"), ("RestrictRealtime", "no")]:  # fmt: skip
        assert unit[key] == [value], key

    # Installing again (an upgrade, a new Kafka) rewrites its own files in place.
    install(root, "--kafka", "k3:9092", "--backend", "proc")
    assert load_settings(root / CONFIG).kafka.bootstrap == "k3:9092"

    done = ruleless("uninstall-agent", "--prefix", str(root))
    assert done.returncode == 0, done.stderr
    assert tree(root) == {"etc", "etc/hosts"}


def test_uninstall_keeps_a_file_edited_since_and_install_never_overwrites_a_stranger(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root)
    with (root / CONFIG).open("a") as fh:
        fh.write("\n[engine]\nwarn = 0.6\n")
    done = ruleless("uninstall-agent", "--prefix", str(root))
    assert done.returncode == 0 and "kept" in done.stdout
    assert tree(root) == {"etc", "etc/ruleless", str(CONFIG)}

    refused = ruleless("install-agent", "--org", "acme", "--workload", "web", "--prefix", str(root))
    assert refused.returncode == 2 and "was not written by install-agent" in refused.stderr
    assert ruleless("install-agent", "--org", "no/slash", "--workload", "web", "--prefix", str(tmp_path / "r2")).returncode == 2
    assert not (tmp_path / "r2").exists()  # refused before anything was written


def test_capabilities_follow_the_backend_and_the_kernel() -> None:
    assert capabilities("proc") == ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]
    assert "CAP_SYS_ADMIN" not in capabilities("ebpf", "6.1.0-50-cloud-amd64")
    assert "CAP_SYS_ADMIN" in capabilities("ebpf", "5.4.0-150-generic")  # no CAP_BPF/CAP_PERFMON before 5.8
    assert set(capabilities("auto", "6.1")) == set(capabilities("netlink", "6.1")) | set(capabilities("ebpf", "6.1"))


@pytest.mark.parametrize("backend", ["proc", "netlink", "ebpf", "auto"])
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path, backend: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian: package systemd)")
    path = tmp_path / "ruleless-agent.service"
    path.write_text(unit_text(RULELESS, backend))
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys: they only show as warnings, so the output must be empty.
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
    security = subprocess.run([analyze, "security", "--offline=true", str(path)], capture_output=True, text=True, timeout=60)
    assert "Overall exposure level" in security.stdout and " OK " in security.stdout.splitlines()[-1], security.stdout


def test_ruleless_agent_runs_on_the_written_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--backend", "proc")
    out = tmp_path / "events.jsonl"
    # Port 0: no metrics listener (the machine may run other agents); the file's org,
    # workload and backend are what the events must carry.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RULELESS_")} | {"RULELESS_AGENT__METRICS_PORT": "0"}
    proc = subprocess.Popen([RULELESS, "agent", "--config", str(root / CONFIG), "--output", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        marker = None
        while time.monotonic() < deadline and marker is None:
            subprocess.run(["sleep", "1.2"])  # outlives a 0.5 s poll: the proc backend sees it
            if out.exists():
                events = [decode(line) for line in out.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]
                marker = next((e for e in events if e.cmdline == "sleep 1.2"), None)
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
    finally:
        proc.send_signal(signal.SIGTERM)
        logs = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, logs
    assert marker is not None, logs
    assert (marker.org_id, marker.workload, marker.source) == ("acme", "web-01", "procfs")


def start_with_caps(backend: str, caps: list[str], tmp_path: Path, timeout: float = 90) -> tuple[bool, str]:
    """Start `ruleless agent --backend BACKEND` with only ``caps`` in its bounding set (as
    the unit's CapabilityBoundingSet does); (whether capture started, its log)."""
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in caps)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RULELESS_")} | {"RULELESS_AGENT__METRICS_PORT": "0"}
    log = tmp_path / f"agent-{backend}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["setpriv", f"--bounding-set={bounding}", "--", RULELESS, "agent", "--backend", backend,
                                 "--output", str(tmp_path / f"{backend}.jsonl")], env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and "agent running:" not in log.read_text():
            time.sleep(0.2)
        return "agent running:" in log.read_text(), log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


@pytest.mark.root
@pytest.mark.parametrize("backend", ["netlink", "ebpf"])
def test_each_backend_starts_with_the_units_capabilities_and_no_more(tmp_path: Path, backend: str) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run the agent with a reduced bounding set")
    if backend == "ebpf":
        from agent.ebpf import import_bcc
        from schemas.errors import CaptureError

        try:
            import_bcc()
        except CaptureError as exc:
            pytest.skip(f"BCC is not set up here (bpf/setup-host.sh): {exc}")
    started, log = start_with_caps(backend, capabilities(backend), tmp_path)
    assert started, log
    # And the capabilities are needed: without those beyond /proc polling it cannot start.
    started, log = start_with_caps(backend, capabilities("proc"), tmp_path)
    assert not started and "unavailable" in log, log
