"""Fixtures for the OTLP push tests: a real OTLP/gRPC metrics receiver on a loopback port, and one
snapshot of the h100-inference-node scenario sampled through the simulated NVML."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from prometheus_client.metrics_core import Metric as Family

from exporter.nvml.reader import NvmlReader
from exporter.sampler import Sampler, SamplerOptions
from exporter.snapshot import CommandNameResolver, Snapshot
from simulator import fake_nvml
from simulator.clock import SimClock
from simulator.scenario import load_scenario
from tests.conftest import SCENARIOS

SCENARIO = SCENARIOS / "h100-inference-node.yaml"
WAIT_S = 10.0  # bound on every wait for the receiver


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, store: Callable[[ExportMetricsServiceRequest], None]) -> None:
        self._store = store

    def Export(self, request: ExportMetricsServiceRequest, context: Any) -> ExportMetricsServiceResponse:
        self._store(request)
        return ExportMetricsServiceResponse()


class OtlpReceiver:
    """An OTLP/gRPC metrics receiver that keeps every request; stops and starts again on its port."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.port = 0
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _store(self, request: ExportMetricsServiceRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> None:
        """Listen on the port it had (a free one the first time)."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _MetricsService(self._store), server
        )
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert port != 0, f"cannot listen on 127.0.0.1:{self.port}"
        self.port = port
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(WAIT_S)
            self._server = None

    def received(self) -> list[ExportMetricsServiceRequest]:
        with self._lock:
            return list(self.requests)

    def wait_for(self, count: int, timeout_s: float = WAIT_S) -> list[ExportMetricsServiceRequest]:
        """The requests once there are at least ``count`` (or what there is after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while len(self.received()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    rx = OtlpReceiver()
    rx.start()
    try:
        yield rx
    finally:
        rx.stop()


@dataclass
class Sampled:
    snapshot: Snapshot
    families: list[Family]


@pytest.fixture(scope="module")
def sampled() -> Sampled:
    """The second sample of the scenario at t=60 s, as a sampler listener receives it."""
    scenario = load_scenario(SCENARIO)
    clock = SimClock(manual=True, offset=60)
    seen: list[Sampled] = []
    with fake_nvml.installed(scenario, clock):
        reader = NvmlReader(wall_clock=clock.wall, interval_s=5)
        try:
            sampler = Sampler(
                reader, CommandNameResolver("/nonexistent", reader.process_name), SamplerOptions(interval_s=5)
            )
            sampler.listeners.append(lambda snap, fams: seen.append(Sampled(snap, fams)))
            sampler.sample_once()
            clock.advance(5)
            sampler.sample_once()
        finally:
            reader.shutdown()
    assert len(seen) == 2
    return seen[-1]
