"""agent/process.py: pinned reads of one process and its lineage."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from agent.process import Lineage, finish, grab, read_process
from agent.users import user_name


def test_read_process_of_self() -> None:
    info = read_process(os.getpid())
    assert info is not None
    assert info.pid == os.getpid() and info.stat.comm == Path("/proc/self/comm").read_text().strip()
    assert info.uid == os.getuid() and info.gid == os.getgid()
    assert info.argv and info.exe and os.path.isabs(info.exe)
    assert info.cgroup == Path("/proc/self/cgroup").read_text()


def test_gone_process_reads_as_none() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert read_process(proc.pid) is None


def test_grabbed_process_is_pinned_to_its_pid() -> None:
    proc = subprocess.Popen(["sleep", "5"])
    while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":
        time.sleep(0.01)  # not exec'd yet
    grabbed = grab(proc.pid)
    assert grabbed is not None and grabbed.cmdline == b"sleep\x005\x00"
    proc.kill()
    proc.wait()
    # Reaped after the grab: the held directory no longer answers, whoever gets the pid.
    assert finish(grabbed) is None


def test_lineage_walks_up_from_the_parent() -> None:
    lineage = Lineage()
    names = lineage.ancestors(os.getpid())
    assert names[0] == Path("/proc/self/comm").read_text().strip() and len(names) <= 4
    assert lineage.ancestors(0) == []
    assert user_name(0) == "root" and user_name(987654) is None
