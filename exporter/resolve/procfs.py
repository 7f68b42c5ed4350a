"""Identity of a host process from a proc root: container, pod, command name, start time, model.

NVML reports host PIDs; the exporter reads the host's ``/proc`` (``hostPID: true``). A PID alone is not an
identity: PIDs are reused, so every identity carries the process start time (clock ticks since boot), and
:class:`IdentityCache` re-resolves a PID whose start time changed.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from exporter.resolve.cgroup import CgroupParseError, ContainerRef, parse_cgroup
from exporter.resolve.cmdline import ENV_KEYS, ModelGuess, guess_from_argv

__all__ = ["IdentityCache", "ProcParseError", "ProcReader", "ProcessIdentity"]

_GONE = (FileNotFoundError, ProcessLookupError)
"""What reading a file of an exited process raises (the directory vanished, or the kernel answers ESRCH)."""


@dataclass(frozen=True)
class ProcessIdentity:
    """Who a host process is. The command line itself is never kept (it may carry secrets)."""

    pid: int
    """Host PID."""
    start_time_ticks: int
    """Field 22 of ``/proc/<pid>/stat``: start time in clock ticks since boot. With ``pid``, the key that
    survives PID reuse."""
    comm: str
    """Command name from ``/proc/<pid>/comm`` (at most 15 bytes, set by the kernel or the process)."""
    container: ContainerRef | None
    """Container and pod from ``/proc/<pid>/cgroup``; None for a process in no container."""
    model: str | None
    """Model served, from the command line (see :mod:`exporter.resolve.cmdline`); None when unknown."""
    server: str | None
    """``"vllm"``, ``"tgi"``, ``"sglang"``, ``"triton"``, ``"ollama"``, or None."""
    workload_class: str | None
    """``"inference"``, ``"training"``, ``"experimentation"``, or None."""


class ProcParseError(ValueError):
    """A file under the proc root does not have the kernel's format; the message names the file."""


@dataclass(frozen=True)
class _Stat:
    ppid: int
    start_time_ticks: int


def _parse_stat(data: bytes, pid: int, path: Path) -> _Stat:
    """``pid (comm) state ppid … starttime …``; comm may hold spaces and ')', so split at the last ')'."""
    close = data.rfind(b")")
    open_ = data.find(b"(")
    if close < 0 or open_ < 0 or open_ > close:
        raise ProcParseError(f"{path}: no '(comm)' field in {data[:200]!r}")
    head = data[:open_].strip()
    fields = data[close + 1 :].split()  # fields[0] is field 3 (state)
    if len(fields) < 20:
        raise ProcParseError(f"{path}: {len(fields) + 2} fields, need at least 22, in {data[:200]!r}")
    try:
        stat_pid = int(head)
        ppid = int(fields[1])  # field 4
        start = int(fields[19])  # field 22
    except ValueError:
        raise ProcParseError(f"{path}: pid, ppid or starttime is not an integer in {data[:200]!r}") from None
    if stat_pid != pid:
        raise ProcParseError(f"{path}: names pid {stat_pid}, not {pid}")
    if start < 0 or ppid < 0:
        raise ProcParseError(f"{path}: negative ppid or starttime in {data[:200]!r}")
    return _Stat(ppid, start)


def _split_nul(data: bytes) -> list[str]:
    """NUL-separated strings (argv, environ); trailing empty entries are padding (setproctitle): dropped."""
    parts = data.split(b"\0")
    while parts and not parts[-1]:
        parts.pop()
    return [p.decode("utf-8", errors="replace") for p in parts]


class ProcReader:
    """Reads process identities from a proc root (``/proc``, or a fixture tree in tests)."""

    def __init__(
        self,
        proc_root: str | os.PathLike[str] = "/proc",
        *,
        read_environ: bool = True,
        max_ancestors: int = 4,
    ) -> None:
        """``read_environ``: read ``/proc/<pid>/environ`` for the few variables that name a model
        (``MODEL_ID`` for TGI) or a launcher (``TORCHELASTIC_RUN_ID``); only those are kept, and a process
        whose environment may not be read simply has none. ``max_ancestors``: how many parent processes in
        the same container to ask when a process's own command line does not tell its model or class
        (vLLM engine and worker processes retitle themselves ``VLLM::EngineCore``; torchrun workers run a
        plain ``python train.py``); 0 turns it off."""
        self._root = Path(proc_root)
        self._root_text = str(self._root)
        self._read_environ = read_environ
        self._max_ancestors = max_ancestors

    @property
    def proc_root(self) -> Path:
        """The proc root this reader reads."""
        return self._root

    def _path(self, pid: int, name: str) -> Path:
        return self._root / str(pid) / name

    def _read(self, pid: int, name: str) -> bytes:
        """Content of ``<proc_root>/<pid>/<name>``; raises FileNotFoundError or ProcessLookupError when the
        process is gone."""
        # A plain string path: this runs once per GPU process per sample, and pathlib costs more than the read.
        with open(f"{self._root_text}/{pid}/{name}", "rb") as fh:
            return fh.read()

    def _stat(self, pid: int) -> _Stat:
        return _parse_stat(self._read(pid, "stat"), pid, self._path(pid, "stat"))

    def _container(self, pid: int) -> ContainerRef | None:
        path = self._path(pid, "cgroup")
        text = self._read(pid, "cgroup").decode("utf-8", errors="replace")
        try:
            return parse_cgroup(text, str(path))
        except CgroupParseError as exc:
            raise ProcParseError(str(exc)) from exc

    def _optional(self, pid: int, name: str) -> bytes:
        """A file that may be unreadable (permissions, hidepid) without making the process unknown."""
        try:
            return self._read(pid, name)
        except PermissionError:
            return b""

    def _environ(self, pid: int) -> dict[str, str]:
        if not self._read_environ:
            return {}
        try:
            data = self._read(pid, "environ")
        except OSError:  # not ours to read (ptrace access), or missing; a vanished process is caught by stat
            return {}
        env: dict[str, str] = {}
        for entry in _split_nul(data):
            key, sep, value = entry.partition("=")
            if sep and key in ENV_KEYS:
                env[key] = value
        return env

    def _guess(self, pid: int) -> ModelGuess:
        argv = _split_nul(self._optional(pid, "cmdline"))
        return guess_from_argv(argv, self._environ(pid))

    def start_time_ticks(self, pid: int) -> int | None:
        """Start time of ``pid`` in clock ticks since boot, or None when no such process exists."""
        if pid <= 0:
            return None
        try:
            return self._stat(pid).start_time_ticks
        except _GONE:
            return None

    def identity(self, pid: int) -> ProcessIdentity | None:
        """Identity of ``pid``, or None when the process does not exist or exits while being read.

        Raises ProcParseError (naming the file) when ``stat`` or ``cgroup`` is malformed.
        """
        if pid <= 0:
            return None
        try:
            stat = self._stat(pid)
            container = self._container(pid)
            comm = self._optional(pid, "comm").decode("utf-8", errors="replace").rstrip("\n")
            guess = self._guess(pid)
            if self._stat(pid).start_time_ticks != stat.start_time_ticks:
                return None  # exited and the PID was reused while we read: resolve it next time
        except _GONE:
            return None
        guess = self._with_ancestors(guess, stat.ppid, container)
        return ProcessIdentity(
            pid=pid,
            start_time_ticks=stat.start_time_ticks,
            comm=comm,
            container=container,
            model=guess.model,
            server=guess.server,
            workload_class=guess.workload_class,
        )

    def _with_ancestors(self, guess: ModelGuess, ppid: int, container: ContainerRef | None) -> ModelGuess:
        """Fill what the process's own command line left open from its parents in the same container."""
        for _ in range(self._max_ancestors):
            if guess.model is not None or guess.workload_class not in (None, "inference") or ppid <= 1:
                break
            try:
                parent = self._stat(ppid)
                if self._container(ppid) != container:
                    break  # the container's first process: its parent is the runtime's shim
                parent_guess = self._guess(ppid)
            except (OSError, ValueError):
                break  # an ancestor is optional: a vanished or odd parent only ends the search
            guess = _merge(guess, parent_guess)
            ppid = parent.ppid
        return guess

    def can_see_host_pids(self, pids: Iterable[int]) -> bool:
        """False when none of ``pids`` (host PIDs from NVML) exists under the proc root: the exporter then
        sees another PID namespace (no ``hostPID``). True when at least one exists, or when there are none
        to check."""
        checked = False
        for pid in pids:
            checked = True
            if pid > 0 and self._path(pid, "stat").exists():
                return True
        return not checked


def _merge(child: ModelGuess, parent: ModelGuess) -> ModelGuess:
    """The child's answers first; the parent's model only when it is of the same server (or either has
    none)."""
    same_server = child.server is None or parent.server is None or child.server == parent.server
    return ModelGuess(
        model=child.model if child.model is not None else (parent.model if same_server else None),
        server=child.server or parent.server,
        workload_class=child.workload_class or parent.workload_class,
    )


class IdentityCache:
    """Caches identities by (pid, start_time_ticks): a reused PID is re-resolved, never attributed to the old
    pod. Holds at most ``max_entries`` identities, dropping the least recently used. Not thread-safe: one
    collection loop owns it."""

    def __init__(self, reader: ProcReader, max_entries: int = 65536) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._reader = reader
        self._max_entries = max_entries
        self._entries: dict[int, ProcessIdentity] = {}  # insertion order = least recently used first

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, pid: int) -> ProcessIdentity | None:
        """Identity of ``pid``; reads only ``/proc/<pid>/stat`` when the cached start time still matches,
        resolves in full when it does not. None when the process is gone."""
        start = self._reader.start_time_ticks(pid)
        cached = self._entries.pop(pid, None)
        if start is None:
            return None
        if cached is not None and cached.start_time_ticks == start:
            self._entries[pid] = cached
            return cached
        identity = self._reader.identity(pid)
        if identity is None:
            return None
        self._entries[pid] = identity
        while len(self._entries) > self._max_entries:
            del self._entries[next(iter(self._entries))]
        return identity

    def prune(self, live_pids: Collection[int]) -> None:
        """Drop the entries of PIDs not in ``live_pids``."""
        live = live_pids if isinstance(live_pids, (set, frozenset, Mapping)) else set(live_pids)
        for pid in [p for p in self._entries if p not in live]:
            del self._entries[pid]
