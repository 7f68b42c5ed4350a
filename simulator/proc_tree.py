"""A ``/proc``-like directory for a scenario: what :class:`exporter.resolve.procfs.ProcReader` reads.

One directory per process alive at the clock's current time, holding ``stat`` (52 fields, field 22 = start
time in clock ticks), ``comm``, ``cmdline``, ``environ`` (empty) and ``cgroup`` (cgroup v2, the kubelet's
systemd driver: ``/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/<runtime>-<id>.scope``;
``/system.slice/<comm>.service`` for a process outside Kubernetes). A process's parent is the earliest
started process alive in the same container (as a vLLM worker is the child of its server), else PID 1.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from simulator.clock import SimClock
from simulator.scenario import ContainerSpec, PodSpec, ProcessSpec, Scenario

__all__ = ["FakeProcTree", "cgroup_line", "start_time_ticks"]

TASK_COMM_LEN_BYTES = 15  # the kernel keeps at most 15 bytes of a command name
CLOCK_TICKS_PER_S = 100  # USER_HZ
BOOT_OFFSET_TICKS = 1000  # start time, in ticks since boot, of a process started at scenario second 0
_HEX_ID = re.compile(r"[0-9a-f]{64}")
_SCOPE_PREFIX = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}
_ProcFiles = Mapping[str, bytes]


def start_time_ticks(proc: ProcessSpec) -> int:
    """Field 22 of the process's ``stat``: clock ticks since boot, derived from ``proc.start`` (seconds)."""
    return max(0, int(proc.start * CLOCK_TICKS_PER_S) + BOOT_OFFSET_TICKS)


def _comm(name: str) -> str:
    return name.encode()[:TASK_COMM_LEN_BYTES].decode(errors="ignore")


def cgroup_line(scenario: Scenario, pod: PodSpec | None, container: ContainerSpec | None, comm: str) -> str:
    """The cgroup v2 line (with newline) of a process in ``container`` of ``pod``, or outside Kubernetes."""
    if pod is None or container is None:
        return f"0::/system.slice/{comm}.service\n"
    container_id = scenario.container_id(pod, container)
    if not _HEX_ID.fullmatch(container_id):
        raise ValueError(
            f"container {pod.namespace}/{pod.name}/{container.name}: id {container_id!r} is not 64 lowercase "
            "hex digits, so no cgroup path can name it"
        )
    uid = scenario.pod_uid(pod).replace("-", "_")
    if pod.qos == "guaranteed":
        pod_path = f"kubepods.slice/kubepods-pod{uid}.slice"
    else:
        pod_path = f"kubepods.slice/kubepods-{pod.qos}.slice/kubepods-{pod.qos}-pod{uid}.slice"
    return f"0::/{pod_path}/{_SCOPE_PREFIX[container.runtime]}-{container_id}.scope\n"


def _stat_line(pid: int, comm: str, ppid: int, start_ticks: int) -> str:
    """A ``/proc/<pid>/stat`` line with the kernel's 52 fields; fields this simulation does not model are
    plausible constants."""
    fields: list[int | str] = [
        pid,  # 1 pid
        f"({comm})",  # 2 comm
        "S",  # 3 state
        ppid,  # 4 ppid
        pid,  # 5 pgrp
        pid,  # 6 session
        0,  # 7 tty_nr
        -1,  # 8 tpgid
        4194560,  # 9 flags
        *([0] * 4),  # 10-13 minflt, cminflt, majflt, cmajflt
        *([0] * 4),  # 14-17 utime, stime, cutime, cstime
        20,  # 18 priority
        0,  # 19 nice
        1,  # 20 num_threads
        0,  # 21 itrealvalue
        start_ticks,  # 22 starttime
        0,  # 23 vsize
        0,  # 24 rss
        18446744073709551615,  # 25 rsslim
        *([0] * 10),  # 26-35 startcode … wchan
        0,  # 36 nswap
        0,  # 37 cnswap
        17,  # 38 exit_signal (SIGCHLD)
        0,  # 39 processor
        0,  # 40 rt_priority
        0,  # 41 policy
        *([0] * 10),  # 42-51 delayacct_blkio_ticks … env_end
        0,  # 52 exit_code
    ]
    assert len(fields) == 52
    return " ".join(str(f) for f in fields) + "\n"


class FakeProcTree:
    """A /proc-like directory for the scenario's processes alive at the clock's current time."""

    def __init__(self, scenario: Scenario, clock: SimClock, root: Path | None = None) -> None:
        """``root``: the directory to fill (created when missing); a fresh temporary one when None."""
        self.scenario = scenario
        self.clock = clock
        containers = {
            f"{pod.namespace}/{pod.name}/{container.name}": (pod, container)
            for pod in scenario.pods
            for container in pod.containers
        }
        self._where: dict[int, tuple[PodSpec, ContainerSpec] | None] = {}
        for proc in scenario.processes:
            where = containers.get(proc.container) if proc.container is not None else None
            self._where[proc.pid] = where
            self._cgroup(proc)  # a container id no cgroup path can hold fails here, not in sync()
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="gpuattr-proc-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._written: dict[int, _ProcFiles] = {}  # pid → files as last written
        self._serial = itertools.count()

    def _cgroup(self, proc: ProcessSpec) -> str:
        where = self._where[proc.pid]
        pod, container = where if where is not None else (None, None)
        return cgroup_line(self.scenario, pod, container, _comm(proc.name))

    def _files(self, proc: ProcessSpec, alive: list[ProcessSpec]) -> _ProcFiles:
        comm = _comm(proc.name)
        ppid = 1
        if proc.container is not None:
            mates = [p for p in alive if p.container == proc.container]
            first = min(mates, key=lambda p: (p.start, p.pid))
            if first.pid != proc.pid:
                ppid = first.pid
        argv = proc.cmdline or [proc.name]
        return {
            "stat": _stat_line(proc.pid, comm, ppid, start_time_ticks(proc)).encode(),
            "comm": (comm + "\n").encode(),
            "cmdline": b"".join(arg.encode() + b"\0" for arg in argv),
            "environ": b"",
            "cgroup": self._cgroup(proc).encode(),
        }

    def sync(self) -> None:
        """Make the tree match the processes alive now: each process directory appears or vanishes whole
        (written aside, then renamed into place)."""
        now_s = self.clock.now()
        alive = [p for p in self.scenario.processes if p.alive(now_s)]
        if self.scenario.faults.host_pids_hidden:
            alive = []  # the exporter's PID namespace shows none of the node's processes
        wanted = {p.pid: self._files(p, alive) for p in alive}
        for pid in [pid for pid in self._written if wanted.get(pid) != self._written[pid]]:
            self._remove(pid)
        for pid, files in wanted.items():
            if pid not in self._written:
                self._write(pid, files)

    def _write(self, pid: int, files: _ProcFiles) -> None:
        staging = self.root / f".new-{pid}-{next(self._serial)}"
        staging.mkdir()
        for name, data in files.items():
            (staging / name).write_bytes(data)
        target = self.root / str(pid)
        if target.exists():
            self._remove(pid)  # left from an earlier tree in the same root
        os.replace(staging, target)
        self._written[pid] = files

    def _remove(self, pid: int) -> None:
        target = self.root / str(pid)
        graveyard = self.root / f".gone-{pid}-{next(self._serial)}"
        try:
            os.replace(target, graveyard)
        except FileNotFoundError:
            pass
        else:
            shutil.rmtree(graveyard, ignore_errors=True)
        self._written.pop(pid, None)

    def close(self) -> None:
        """Remove the directory if this tree created it."""
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
        self._written.clear()

    def __enter__(self) -> FakeProcTree:
        self.sync()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
