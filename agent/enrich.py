"""Turn what a backend saw about a process into a raw event with its context.

The event-driven backends (netlink, eBPF) share this: given the kernel's word that a
process exec'd (pid, when) and what /proc said about it at once
(:class:`agent.process.ProcessInfo`), build the :class:`~schemas.events.RawEvent` with
user name, parent, ancestors, container id and the (org_id, workload) it belongs to.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from agent.capture import make_exec_id, stable_event_id
from agent.process import Lineage, ProcessInfo
from agent.procfs import container_id_from_cgroup
from agent.users import user_name
from agent.workload import WorkloadResolver
from ruleless.settings import AgentSettings
from schemas.events import RawEvent


class Enricher:
    """Builds exec events; one per backend, used from one thread."""

    def __init__(self, agent: AgentSettings, source: str, proc_root: str | Path = "/proc") -> None:
        self._agent = agent
        self._source = source
        self.lineage = Lineage(proc_root)
        self.workloads = WorkloadResolver(agent)

    def exec_event(
        self,
        info: ProcessInfo,
        ts: float,
        occurrence: str,
        *,
        argv: list[str] | None = None,
        flags: list[str] | None = None,
        ppid: int | None = None,
    ) -> RawEvent:
        """The exec event of ``info``'s process at ``ts`` (epoch seconds).

        ``occurrence`` tells several execs of one process apart (one process may exec
        more than once, e.g. ``sh -c 'exec foo'``); the kernel's exec timestamp is a good
        one, since it never changes when the event is re-sent. ``argv``/``flags``
        override what /proc said; ``ppid`` overrides the parent.
        """
        return self._event(info, ts, "exec", occurrence, argv=argv, flags=flags, ppid=ppid)

    def connection_event(
        self,
        info: ProcessInfo,
        ts: float,
        event_type: str,
        occurrence: str,
        *,
        local: tuple[str, int],
        remote: tuple[str, int] | None,
    ) -> RawEvent:
        """A ``connect`` or ``listen`` event of ``info``'s process, with its exec context
        (command line, parent, ancestors), so it scores like the process it belongs to.
        ``occurrence`` identifies the socket (e.g. its inode)."""
        event = self._event(info, ts, event_type, occurrence)
        return msgspec.structs.replace(
            event,
            local_ip=local[0], local_port=local[1],
            remote_ip=remote[0] if remote else None, remote_port=remote[1] if remote else None,
        )  # fmt: skip

    def _event(
        self,
        info: ProcessInfo,
        ts: float,
        event_type: str,
        occurrence: str,
        *,
        argv: list[str] | None = None,
        flags: list[str] | None = None,
        ppid: int | None = None,
    ) -> RawEvent:
        stat = info.stat
        parent = stat.ppid if ppid is None else ppid
        exec_id = make_exec_id(self._agent.host, stat.start_ticks, stat.pid)
        ancestors = self.lineage.ancestors(parent)
        org_id, workload = self.workloads.resolve(info.cgroup)
        all_flags = list(info.flags if flags is None else flags)
        argv = info.argv if argv is None else argv
        return RawEvent(
            ts=ts,
            org_id=org_id,
            workload=workload,
            host=self._agent.host,
            event_type=event_type,
            event_id=stable_event_id(exec_id, event_type, occurrence),
            pid=stat.pid,
            ppid=parent,
            uid=info.uid,
            user=user_name(info.uid),
            process_name=stat.comm,
            exe=info.exe,
            cmdline=" ".join(argv),
            argv=argv,
            parent_process=ancestors[0] if ancestors else "",
            ancestors=ancestors,
            container_id=container_id_from_cgroup(info.cgroup) if info.cgroup else None,
            exec_id=exec_id,
            source=self._source,
            flags=all_flags or None,
        )
