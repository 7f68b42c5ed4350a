"""Container and pod identity from the text of ``/proc/<pid>/cgroup``.

Handles cgroup v1 (one ``N:controllers:/path`` line per hierarchy) and v2 (``0::/path``), the kubelet's
cgroupfs and systemd drivers, the containerd, CRI-O and Docker runtimes, and paths made relative by a
cgroup namespace (``0::/../../kubepods-…``). Paths are matched segment by segment anywhere in the path,
never anchored at the root, and the deepest match wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CgroupParseError", "ContainerRef", "parse_cgroup"]


@dataclass(frozen=True)
class ContainerRef:
    """Where a process runs, as far as its cgroup path tells."""

    pod_uid: str | None
    """Pod UID normalised with ``-`` (systemd slice names use ``_``); None outside Kubernetes."""
    container_id: str | None
    """Bare hex container ID without runtime prefix; None when the path names only the pod."""
    runtime: str | None
    """``"containerd"``, ``"cri-o"`` or ``"docker"``; None when the path does not say (cgroupfs driver)."""
    qos: str | None
    """``"guaranteed"``, ``"burstable"`` or ``"besteffort"``; None outside Kubernetes or when a relative
    cgroupfs path hides the level."""


class CgroupParseError(ValueError):
    """The cgroup text is not a list of ``hierarchy:controllers:path`` lines; names the source and line."""


_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
# cgroupfs driver: ".../kubepods/<qos>/pod<uid>/<id>"; static pods have a 32-hex config hash as UID.
_POD_CGROUPFS = re.compile(rf"pod({_UID})")
# systemd driver: "kubepods-<qos>-pod<uid>.slice", "kubepods-pod<uid>.slice" (guaranteed),
# also "kubelet-kubepods-<qos>-pod<uid>.slice".
_POD_SYSTEMD = re.compile(rf"(?:.+-)?kubepods-(?:(burstable|besteffort)-)?pod({_UID})\.slice")
_HEX_ID = r"[0-9a-f]{64}"
_CONTAINER_SCOPE = re.compile(rf"(cri-containerd|crio|docker|libpod)-({_HEX_ID})\.scope")
_BARE_ID = re.compile(_HEX_ID)
_LINE = re.compile(r"(\d+):([^:]*):(.*)")

_RUNTIMES: dict[str, str | None] = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": None,  # podman: a container, but not one of the runtimes the exporter names
}
_CGROUPFS_QOS: dict[str, str] = {
    "burstable": "burstable",
    "besteffort": "besteffort",
    "kubepods": "guaranteed",
}


@dataclass(frozen=True)
class _Pod:
    position: int
    uid: str
    qos: str | None


@dataclass(frozen=True)
class _Container:
    position: int
    container_id: str
    runtime: str | None


def _tokens(path: str) -> list[str]:
    """Path segments, with ``slice:runtime:id`` segments (containerd under systemd) split at ':'."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment:
            out.extend(segment.split(":"))
    return out


def _parse_path(path: str) -> tuple[ContainerRef | None, int]:
    """The container a cgroup path names, and the path's depth in segments (for choosing among lines)."""
    tokens = _tokens(path)
    pod: _Pod | None = None
    container: _Container | None = None
    for i, token in enumerate(tokens):
        if m := _POD_SYSTEMD.fullmatch(token):
            qos = m.group(1) or "guaranteed"
            pod = _Pod(i, m.group(2).replace("_", "-"), qos)
        elif m := _POD_CGROUPFS.fullmatch(token):
            previous = tokens[i - 1] if i > 0 else ""
            pod = _Pod(i, m.group(1).replace("_", "-"), _CGROUPFS_QOS.get(previous))
        elif m := _CONTAINER_SCOPE.fullmatch(token):
            container = _Container(i, m.group(2), _RUNTIMES[m.group(1)])
        elif _BARE_ID.fullmatch(token):
            previous = tokens[i - 1] if i > 0 else ""
            # "/docker/<id>" or "<pod slice>:cri-containerd:<id>"; cgroupfs paths do not name the runtime.
            runtime = _RUNTIMES.get(previous)
            container = _Container(i, token, runtime)
        # Anything else ("crio-conmon-<id>.scope", "burstable", "system.slice", "..") names no container.
    if pod is not None and container is not None and container.position < pod.position:
        container = None  # e.g. a kind node's own Docker ID above the pod: not this process's container
    if pod is None and container is None:
        return None, len(tokens)
    ref = ContainerRef(
        pod_uid=pod.uid if pod else None,
        container_id=container.container_id if container else None,
        runtime=container.runtime if container else None,
        qos=pod.qos if pod else None,
    )
    return ref, len(tokens)


def _is_garbage(line: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 or c == "\ufffd" for c in line)


def parse_cgroup(text: str, source: str) -> ContainerRef | None:
    """The container a process runs in, from the content of its ``/proc/<pid>/cgroup``.

    ``source`` names where the text came from (a file path or ``"<pid 123 cgroup>"``) for error messages.
    Returns None for a process in no container (``/user.slice/…``, ``/system.slice/sshd.service``,
    ``/init.scope``) and for empty text. With several lines (cgroup v1) the most specific wins: one naming a
    container over one naming only a pod, then the deepest path. Raises CgroupParseError on a line that is
    not ``hierarchy:controllers:/path``.
    """
    best: ContainerRef | None = None
    best_rank: tuple[bool, bool, int] = (False, False, -1)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line)
        if m is None or not m.group(3).startswith("/") or _is_garbage(line):
            shown = line if len(line) <= 200 else line[:200] + "…"
            raise CgroupParseError(f"{source}: line {number} is not 'hierarchy:controllers:/path': {shown!r}")
        ref, depth = _parse_path(m.group(3))
        if ref is None:
            continue
        rank = (ref.container_id is not None, ref.pod_uid is not None, depth)
        if rank > best_rank:
            best, best_rank = ref, rank
    return best
