"""Which (org_id, workload) baseline a process belongs to, and its container id.

One host may run several services that deserve baselines of their own. With
``agent.workload_from``:

- ``config`` (default): every process gets ``agent.workload``.
- ``systemd``: a process inside a systemd service gets the unit's name
  (``/system.slice/nginx.service`` → ``nginx``; ``getty@tty1.service`` → ``getty-tty1``);
  anything else (login sessions, init, kernel helpers) gets ``agent.workload``.
- ``container``: a containerised process gets its container's name when the runtime's
  state is readable (Docker's ``/var/lib/docker/containers/ID/config.v2.json``), else
  ``ctr-`` + the first 12 hex digits of its id; host processes get ``agent.workload``.

``agent.org_id`` is the same for the whole host. Names are made safe for
:data:`schemas.events.NAME_PATTERN` (invalid characters become ``-``, at most 64).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ruleless.settings import AgentSettings

# A 64-hex container id as a whole cgroup path segment, optionally wrapped the way
# docker, containerd (cri-containerd-), cri-o (crio-) and podman (libpod-) name it:
#   /docker/<id>   /system.slice/docker-<id>.scope   .../cri-containerd-<id>.scope
#   .../crio-<id>.scope   .../libpod-<id>.scope   /kubepods/.../<id>
_CONTAINER_SEGMENT = re.compile(
    r"^(?:(?:docker|cri-containerd|containerd|crio|libpod)-)?([0-9a-f]{64})(?:\.scope)?$"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_SERVICE = re.compile(r"^(.+)\.service$")
_CACHE_LIMIT = 4096


def container_id_from_cgroup(text: str) -> str | None:
    """The 64-hex container id in /proc/PID/cgroup, or None for a host process.

    Recognises docker, containerd/Kubernetes, cri-o and podman layouts on cgroup v1 and
    v2. The innermost (last) id in a path wins.
    """
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for segment in reversed(path.split("/")):
            match = _CONTAINER_SEGMENT.match(segment)
            if match:
                return match.group(1)
    return None


def safe_name(raw: str) -> str | None:
    """``raw`` made into a valid org/workload name, or None if nothing usable is left."""
    name = _UNSAFE.sub("-", raw).strip("-._")[:64].rstrip("-._")
    return name or None


def systemd_unit(cgroup: str) -> str | None:
    """The innermost systemd *service* unit in a /proc/PID/cgroup text, without suffix.

    Services under a user manager (``user@1000.service/app.slice/x.service``) count too;
    ``user@N.service`` itself, scopes and slices do not.
    """
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        for segment in reversed(path.split("/")):
            match = _SERVICE.match(segment)
            if match and not segment.startswith("user@"):
                return match.group(1)
    return None


class WorkloadResolver:
    """Maps a process's cgroup text to (org_id, workload), caching per distinct text."""

    def __init__(self, agent: AgentSettings, docker_root: str | Path = "/var/lib/docker") -> None:
        self._agent = agent
        self._docker = Path(docker_root)
        self._cache: dict[str, tuple[str, str]] = {}

    def resolve(self, cgroup: str) -> tuple[str, str]:
        """(org_id, workload) for a process whose /proc/PID/cgroup reads ``cgroup``."""
        if self._agent.workload_from == "config":
            return self._agent.org_id, self._agent.workload
        hit = self._cache.get(cgroup)
        if hit is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            hit = self._cache[cgroup] = (self._agent.org_id, self._derive(cgroup) or self._agent.workload)
        return hit

    def _derive(self, cgroup: str) -> str | None:
        if self._agent.workload_from == "systemd":
            unit = systemd_unit(cgroup)
            return safe_name(unit) if unit else None
        container = container_id_from_cgroup(cgroup)
        if container is None:
            return None
        return safe_name(self._docker_name(container) or "") or f"ctr-{container[:12]}"

    def _docker_name(self, container_id: str) -> str | None:
        try:
            config = json.loads((self._docker / "containers" / container_id / "config.v2.json").read_text())
        except (OSError, ValueError):
            return None
        name = config.get("Name") if isinstance(config, dict) else None
        return name.lstrip("/") if isinstance(name, str) else None
