"""A simulated kubelet pod-resources API: a real gRPC ``v1.PodResourcesLister`` server on a unix socket.

Answers are built on every call from callables, so a test or the simulated node changes what the "kubelet"
reports by changing what the callables return. Like the kubelet, it removes a stale socket file before
binding, and ``stop()`` removes the socket (``stop(leave_dead_socket=True)`` leaves one nobody listens
on, as a crashed kubelet does). ``grpc`` and the generated stubs are imported by ``start()``.
"""

from __future__ import annotations

import importlib
import os
import socket
import stat
from collections.abc import Callable, Collection, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

# AF_UNIX socket paths hold at most 107 bytes (108 with the terminating NUL).
MAX_SOCKET_PATH_BYTES = 107


@dataclass
class SimContainer:
    """One container and what the simulated kubelet says it was allocated."""

    name: str
    devices: list[tuple[str, list[str]]]  # (resource_name, device_ids)
    cpu_ids: list[int] = field(default_factory=list)  # exclusive CPUs (CPU manager static policy)
    memory: list[tuple[str, int]] = field(default_factory=list)  # (memory_type, size in bytes)


@dataclass
class SimPod:
    """One pod on the simulated node."""

    namespace: str
    name: str
    containers: list[SimContainer]


class PodResourcesServer:
    """Serves ``v1.PodResourcesLister`` on ``socket_path`` from ``pods()`` and ``allocatable()``.

    ``unimplemented`` names methods ("List", "Get", "GetAllocatableResources") to answer with
    UNIMPLEMENTED, as an old kubelet does. A pod unknown to ``Get`` is answered the kubelet's way: status
    UNKNOWN, "pod <name> not found in namespace <namespace>".
    """

    def __init__(
        self,
        socket_path: str,
        pods: Callable[[], Sequence[SimPod]],
        allocatable: Callable[[], Sequence[tuple[str, Sequence[str]]]] = lambda: (),
        *,
        unimplemented: Collection[str] = (),
        max_workers: int = 4,
    ) -> None:
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
            raise ValueError(
                f"unix socket path {socket_path!r} is longer than {MAX_SOCKET_PATH_BYTES} bytes; use a shorter one"
            )
        self.socket_path = socket_path
        self.pods = pods
        self.allocatable = allocatable
        self.unimplemented = frozenset(unimplemented)
        self.max_workers = max_workers
        self._server: Any = None
        self.calls: dict[str, int] = {"List": 0, "Get": 0, "GetAllocatableResources": 0}  # served, by method

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Bind the socket and serve on a thread pool; OSError naming the path when binding fails."""
        if self._server is not None:
            return
        grpc = importlib.import_module("grpc")
        pb2_grpc = importlib.import_module("exporter.resolve.proto.podresources.v1.api_pb2_grpc")
        parent = os.path.dirname(os.path.abspath(self.socket_path))
        os.makedirs(parent, exist_ok=True)
        self._remove_socket()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers))
        add: Callable[[Any, Any], None] = pb2_grpc.add_PodResourcesListerServicer_to_server
        add(_make_servicer(self), server)
        try:
            bound = server.add_insecure_port(f"unix://{os.path.abspath(self.socket_path)}")
        except RuntimeError as exc:
            raise OSError(f"cannot bind unix socket {self.socket_path}: {exc}") from exc
        if not bound:
            raise OSError(f"cannot bind unix socket {self.socket_path}")
        server.start()
        self._server = server

    def stop(self, *, grace_s: float | None = None, leave_dead_socket: bool = False) -> None:
        """Stop serving (``grace_s`` seconds for calls in flight) and remove the socket.

        ``leave_dead_socket`` leaves a socket file nobody listens on (connections are refused), as a
        crashed kubelet does.
        """
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace_s).wait()
        self._remove_socket()
        if leave_dead_socket:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
                dead.bind(self.socket_path)

    def __enter__(self) -> PodResourcesServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _remove_socket(self) -> None:
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{self.socket_path} exists and is not a unix socket; refusing to remove it")
        os.unlink(self.socket_path)


def _pod_message(pb2: Any, pod: SimPod) -> Any:
    return pb2.PodResources(
        name=pod.name,
        namespace=pod.namespace,
        containers=[
            pb2.ContainerResources(
                name=container.name,
                devices=[
                    pb2.ContainerDevices(resource_name=resource, device_ids=list(ids))
                    for resource, ids in container.devices
                ],
                cpu_ids=list(container.cpu_ids),
                memory=[
                    pb2.ContainerMemory(memory_type=memory_type, size=size_bytes)
                    for memory_type, size_bytes in container.memory
                ],
            )
            for container in pod.containers
        ],
    )


def _make_servicer(owner: PodResourcesServer) -> Any:
    """A ``PodResourcesListerServicer`` that answers from ``owner``'s callables."""
    import grpc

    from exporter.resolve.proto.podresources.v1 import api_pb2 as pb2
    from exporter.resolve.proto.podresources.v1 import api_pb2_grpc as pb2_grpc

    def check(method: str, context: Any) -> None:
        if method in owner.unimplemented:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {method} for service v1.PodResourcesLister")
        owner.calls[method] += 1

    class Servicer(pb2_grpc.PodResourcesListerServicer):
        def List(self, request: Any, context: Any) -> Any:
            check("List", context)
            return pb2.ListPodResourcesResponse(pod_resources=[_pod_message(pb2, pod) for pod in owner.pods()])

        def GetAllocatableResources(self, request: Any, context: Any) -> Any:
            check("GetAllocatableResources", context)
            return pb2.AllocatableResourcesResponse(
                devices=[
                    pb2.ContainerDevices(resource_name=resource, device_ids=list(ids))
                    for resource, ids in owner.allocatable()
                ]
            )

        def Get(self, request: Any, context: Any) -> Any:
            check("Get", context)
            for pod in owner.pods():
                if pod.namespace == request.pod_namespace and pod.name == request.pod_name:
                    return pb2.GetPodResourcesResponse(pod_resources=_pod_message(pb2, pod))
            context.abort(
                grpc.StatusCode.UNKNOWN,
                f"pod {request.pod_name} not found in namespace {request.pod_namespace}",
            )
            return None  # not reached: abort raises

    return Servicer()
