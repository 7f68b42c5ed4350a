"""Drive the exporter over hours of simulated time with a hand-moved clock, and check it as it goes.

The exporter runs its production path (fake NVML, fake ``/proc``, emulated API server with a real watch,
real kubelet gRPC socket, HTTP server) in this process; only the clock is ours. At each checkpoint the
soak waits for the pod watch to catch up, takes a sample, scrapes ``/metrics`` over HTTP and compares
every per-container memory series with what the scenario says is alive, and records the process's
memory, file descriptors, threads and the sizes of the exporter's caches.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from common import catalog as c
from common.fetch import fetch
from exporter.app import Exporter, build
from exporter.pods import KubeOwnerResolver
from exporter.settings import ExporterSettings
from simulator.clock import SimClock
from simulator.node import SimulatedNode
from simulator.scenario import Scenario

START_WALL = 1_750_000_000.0  # unix seconds at scenario second 0
CATCH_UP_S = 10.0  # how long a checkpoint waits for the pod watch to show the live pods


@dataclass
class Checkpoint:
    at_s: float  # scenario second
    samples: int
    rss_bytes: int
    fds: int
    threads: int
    series: int  # lines of the exposition that are samples
    pods_alive: int
    processes_alive: int
    container_series: int  # per-container memory series served
    wrong: list[str] = field(default_factory=list)  # a served value that disagrees with the scenario
    stale: list[str] = field(default_factory=list)  # a pod or process served that is gone
    missing: list[str] = field(default_factory=list)  # alive with GPU memory, not served
    tracked: dict[str, int] = field(default_factory=dict)  # sizes of the exporter's caches


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class ChurnSoak:
    def __init__(self, scenario: Scenario, *, interval_s: float = 15.0) -> None:
        self.scenario = scenario
        self.interval_s = interval_s
        self._containers = {  # 'namespace/pod/container' as processes name it -> its labels
            f"{p.namespace}/{p.name}/{ct.name}": (p.namespace, p.name, ct.name)
            for p in scenario.pods
            for ct in p.containers
        }
        self.clock = SimClock(manual=True, start_wall=START_WALL)
        self.node = SimulatedNode(scenario, self.clock)
        settings = ExporterSettings(kubernetes=True, listen="127.0.0.1:0", interval=interval_s)
        self.exporter: Exporter = build(settings, simulation=self.node)
        self.exporter.server.start()
        resolver = self.exporter.sampler.resolver
        assert isinstance(resolver, KubeOwnerResolver)
        assert resolver.pods is not None
        self.resolver = resolver
        self.pod_cache = resolver.pods

    def close(self) -> None:
        self.exporter.stop()

    def __enter__(self) -> ChurnSoak:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- running ----------------------------------------------------------------------------------------
    def run(self, seconds: float, *, checkpoint_every_s: float) -> Iterator[Checkpoint]:
        """Sample every interval for ``seconds`` of scenario time; yield a checkpoint every so often."""
        next_check = 0.0
        end = self.clock.now() + seconds
        while self.clock.now() + self.interval_s <= end + 1e-9:
            self.clock.advance(self.interval_s)
            if self.clock.now() >= next_check:
                yield self.checkpoint()
                next_check = self.clock.now() + checkpoint_every_s
            else:
                self.exporter.sampler.sample_once()

    def checkpoint(self) -> Checkpoint:
        now = self.clock.now()
        alive_pods = {(p.namespace, p.name) for p in self.scenario.pods if p.alive(now)}
        self.node.sync()  # create and delete this instant's pods, then let the watch catch up
        self._catch_up(alive_pods)
        self.exporter.sampler.sample_once()
        body = fetch(self.exporter.server.url, timeout_s=10).body.decode()
        gc.collect()
        point = Checkpoint(
            at_s=now,
            samples=self.exporter.sampler.samples_total,
            rss_bytes=_rss_bytes(),
            fds=len(os.listdir("/proc/self/fd")),
            threads=threading.active_count(),
            series=sum(1 for line in body.splitlines() if line and not line.startswith("#")),
            pods_alive=len(alive_pods),
            processes_alive=sum(1 for p in self.scenario.processes if p.alive(now)),
            container_series=0,
        )
        self._compare(body, now, alive_pods, point)
        point.tracked = {
            "identity_cache": len(self.resolver.cache),
            "unreadable_warned": len(self.resolver._warned_unreadable),
            "pod_cache": len(self.pod_cache.pods()),
            "owner_cache": len(self.pod_cache._owners),
            "nvml_health_states": len(self.exporter.reader.health._state),
            "renderer_prefixes": len(self.exporter.sampler._renderer._prefixes),
        }
        return point

    def _catch_up(self, want: set[tuple[str, str]]) -> None:
        deadline = time.monotonic() + CATCH_UP_S
        while {(m.namespace, m.name) for m in self.pod_cache.pods()} != want and time.monotonic() < deadline:
            time.sleep(0.01)

    def _compare(self, body: str, now: float, alive_pods: set[tuple[str, str]], point: Checkpoint) -> None:
        labels = ("gpu", "namespace", "pod", "container", "process")
        served: dict[tuple[str, ...], float] = {}
        pods_served: set[tuple[str, str]] = set()
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                if s.name == c.CONTAINER_MEMORY.name:
                    served[tuple(s.labels[k] for k in labels)] = s.value
                elif s.name == c.POD_INFO.name:
                    pods_served.add((s.labels["namespace"], s.labels["pod"]))
        point.container_series = len(served)
        expected: dict[tuple[str, ...], float] = {}
        for proc in self.scenario.processes:
            if not proc.alive(now):
                continue
            for gpu in proc.gpus:
                ns, pod, container = self._containers[proc.container] if proc.container else ("", "", "")
                want = (str(gpu), ns, pod, container, "" if proc.container else proc.name)
                expected[want] = expected.get(want, 0.0) + self.node.nvml.process_memory(proc, now)
        for key, value in sorted(served.items()):
            if key not in expected:
                point.stale.append("/".join(key))
            elif value != expected[key]:
                point.wrong.append(f"{'/'.join(key)}: served {value:.0f}, alive {expected[key]:.0f}")
        point.missing.extend("/".join(k) for k in sorted(expected) if k not in served)
        point.stale.extend(f"pod_info {ns}/{pod}" for ns, pod in sorted(pods_served - alive_pods))
