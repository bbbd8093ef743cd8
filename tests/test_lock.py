"""The pinned install (issue 12): requirements.lock agrees with pyproject.toml, and the
virtualenv `make install` built holds exactly what the lock names."""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
LOCK = ROOT / "requirements.lock"


def read_lock() -> dict[str, str]:
    """name -> pinned version; every non-comment line must be an exact `==` pin."""
    pins: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"requirements.lock:{number}: {line!r} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"requirements.lock:{number}: {req.name} is pinned twice"
        pins[name] = specs[0].version
    return pins


def declared_requirements() -> list[Requirement]:
    """What pyproject.toml asks for: runtime, every extra, and the build backend."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        lines += extra
    lines += project["build-system"]["requires"]
    return [Requirement(line) for line in lines]


def test_every_declared_requirement_is_pinned_inside_its_range() -> None:
    pins = read_lock()
    problems = []
    for req in declared_requirements():
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req} is not in requirements.lock")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req} does not admit the pinned {pinned}")
    assert not problems, "requirements.lock is out of step with pyproject.toml (run `make lock`):\n" + "\n".join(problems)


def test_the_installers_themselves_are_pinned() -> None:
    # `make install` takes pip and setuptools from the lock and builds without isolation,
    # so nothing it runs is whatever happened to be newest that day.
    assert {"pip", "setuptools"} <= read_lock().keys()


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="checks the virtualenv `make install` builds; this run uses another environment",
)
def test_the_virtualenv_holds_exactly_the_locked_versions() -> None:
    pins = read_lock()
    # Only the virtualenv's own site-packages: the eBPF tests append Debian's
    # dist-packages (BCC's module) to sys.path, and its packages are not ours.
    inside = [p for p in sys.path if p and Path(p).resolve().is_relative_to(Path(sys.prefix).resolve())]
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=inside)}
    installed.pop("ruleless", None)
    wrong = {n: (v, pins[n]) for n, v in installed.items() if n in pins and v != pins[n]}
    extra = sorted(set(installed) - set(pins))
    missing = sorted(set(pins) - set(installed))
    assert not wrong, f"installed versions differ from requirements.lock (installed, locked): {wrong}"
    assert not extra, f"installed but not in requirements.lock: {extra} (run `make lock`)"
    assert not missing, f"in requirements.lock but not installed: {missing} (run `make install`)"


def test_every_install_step_uses_the_lock() -> None:
    """The compose image and `make install` take the same pins (no other pip install)."""
    for path in (ROOT / "compose" / "Dockerfile", ROOT / "Makefile"):
        steps = [line for line in path.read_text().splitlines() if "pip install" in line and "lock-venv" not in line]
        assert steps, f"{path.name} installs nothing?"
        unpinned = [line.strip() for line in steps if "-c requirements.lock" not in line and "-c $(LOCK)" not in line]
        assert not unpinned, f"{path.name}: pip install without the lock: {unpinned}"
