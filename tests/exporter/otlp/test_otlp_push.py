"""OTLP push of each snapshot, checked against a real OTLP/gRPC receiver (see conftest)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric, NumberDataPoint

from common import catalog as c
from exporter import app
from exporter.otlp import OtlpPusher
from exporter.settings import ExporterSettings
from tests.exporter.otlp.conftest import SCENARIO, WAIT_S, OtlpReceiver, Sampled

TIMEOUT_S = 0.5  # export timeout: a push to a dead receiver gives up within this


@pytest.fixture
def pusher(receiver: OtlpReceiver) -> Iterator[OtlpPusher]:
    p = OtlpPusher(receiver.endpoint, insecure=True, hostname="gpu-node-a1", timeout_s=TIMEOUT_S)
    try:
        yield p
    finally:
        p.close()


def attrs(kvs: Iterable[KeyValue]) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in kvs}


def metric(request: ExportMetricsServiceRequest, name: str) -> Metric:
    found: list[Metric] = [
        m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == name
    ]
    assert len(found) == 1, f"{name}: {len(found)} metrics in the request"
    return found[0]


def value(point: NumberDataPoint) -> float:
    return float(point.as_int if point.WhichOneof("value") == "as_int" else point.as_double)


@pytest.fixture
def pushed(sampled: Sampled, receiver: OtlpReceiver, pusher: OtlpPusher) -> ExportMetricsServiceRequest:
    assert pusher.push(sampled.snapshot, sampled.families)
    requests = receiver.received()
    assert len(requests) == 1
    return requests[0]


def test_gpu_memory_used_arrives_per_gpu_with_gpu_and_uuid(
    sampled: Sampled, pushed: ExportMetricsServiceRequest
) -> None:
    m = metric(pushed, c.GPU_MEMORY_USED.family)
    assert m.WhichOneof("data") == "gauge"
    assert m.unit == "By"
    got = {attrs(p.attributes)["gpu_uuid"]: (attrs(p.attributes), value(p)) for p in m.gauge.data_points}
    gpus = sampled.snapshot.reading.gpus
    assert len(gpus) == 4
    assert set(got) == {g.uuid for g in gpus}
    for g in gpus:
        labels, v = got[g.uuid]
        assert labels == {"gpu": str(g.index), "gpu_uuid": g.uuid}  # empty mig labels left out
        assert g.memory_used_bytes is not None
        assert v == g.memory_used_bytes


def test_container_memory_arrives_with_the_process_attribute(
    sampled: Sampled, pushed: ExportMetricsServiceRequest
) -> None:
    m = metric(pushed, c.CONTAINER_MEMORY.family)
    points = {(attrs(p.attributes)["gpu_uuid"], attrs(p.attributes)["process"]): p for p in m.gauge.data_points}
    usages = [u for u in sampled.snapshot.usages if u.memory_known]
    assert usages
    assert len(points) == len(usages)
    for u in usages:
        assert u.owner.process
        assert value(points[(u.gpu_uuid, u.owner.process)]) == u.memory_bytes


def test_counter_arrives_as_monotonic_cumulative_sum_from_pusher_creation(
    sampled: Sampled, pushed: ExportMetricsServiceRequest, pusher: OtlpPusher
) -> None:
    m = metric(pushed, c.EXPORTER_SAMPLES.family)
    assert m.name == "gpuattr_exporter_samples"  # OTLP names counters without _total
    assert m.WhichOneof("data") == "sum"
    assert m.sum.is_monotonic
    assert m.sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    (point,) = m.sum.data_points
    assert value(point) == sampled.snapshot.stats["samples_total"] == 2
    assert point.start_time_unix_nano == pusher.start_ns
    assert point.time_unix_nano == round(sampled.snapshot.reading.timestamp * 1e9)
    assert metric(pushed, c.EXPORTER_SAMPLE_CPU.family).unit == "s"


def test_points_carry_the_snapshot_timestamp(sampled: Sampled, pushed: ExportMetricsServiceRequest) -> None:
    expected = round(sampled.snapshot.reading.timestamp * 1e9)
    m = metric(pushed, c.GPU_POWER.family)
    assert m.unit == "W"
    assert {p.time_unix_nano for p in m.gauge.data_points} == {expected}


def test_resource_names_the_service_and_host(pushed: ExportMetricsServiceRequest) -> None:
    (rm,) = pushed.resource_metrics
    resource = attrs(rm.resource.attributes)
    assert resource["service.name"] == "gpuattr-exporter"
    assert resource["host.name"] == "gpu-node-a1"


def test_push_to_stopped_receiver_fails_quietly_and_recovers_when_it_returns(
    sampled: Sampled, receiver: OtlpReceiver, pusher: OtlpPusher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gpuattr.otlp")
    assert pusher.push(sampled.snapshot, sampled.families)
    receiver.stop()
    assert pusher.push(sampled.snapshot, sampled.families) is False
    assert pusher.push(sampled.snapshot, sampled.families) is False
    assert pusher.results == {"success": 1, "failure": 2}
    receiver.start()
    assert pusher.push(sampled.snapshot, sampled.families)
    assert pusher.results == {"success": 2, "failure": 2}
    assert len(receiver.received()) == 2
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "gpuattr.otlp"]
    assert [level for level, _ in records] == ["WARNING", "INFO"]  # once per state change
    assert "UNAVAILABLE" in records[0][1]


def test_push_with_nothing_listening_returns_false_without_raising(sampled: Sampled) -> None:
    rx = OtlpReceiver()
    rx.start()
    endpoint = rx.endpoint
    rx.stop()  # a port that was free a moment ago and has nothing on it now
    p = OtlpPusher(endpoint, insecure=True, timeout_s=TIMEOUT_S)
    try:
        assert p.push(sampled.snapshot, sampled.families) is False
        assert p.results == {"success": 0, "failure": 1}
    finally:
        p.close()


def test_push_after_close_sends_nothing(sampled: Sampled, receiver: OtlpReceiver, pusher: OtlpPusher) -> None:
    pusher.close()
    assert pusher.push(sampled.snapshot, sampled.families) is False
    assert receiver.received() == []


def test_families_count_exports_by_result(sampled: Sampled, receiver: OtlpReceiver, pusher: OtlpPusher) -> None:
    pusher.push(sampled.snapshot, sampled.families)
    receiver.stop()
    pusher.push(sampled.snapshot, sampled.families)
    (fam,) = pusher.families()
    assert fam.name == c.EXPORTER_OTLP_EXPORTS.family
    assert fam.type == "counter"
    totals = {s.labels["result"]: s.value for s in fam.samples if s.name == c.EXPORTER_OTLP_EXPORTS.name}
    assert totals == {"success": 1, "failure": 1}


def test_the_app_pushes_every_sample_when_an_endpoint_is_set(receiver: OtlpReceiver) -> None:
    exporter = app.build(
        ExporterSettings(
            simulate=str(SCENARIO),
            listen="127.0.0.1:0",
            otlp_endpoint=receiver.endpoint,
            otlp_insecure=True,
            interval=0.5,
            hostname="sim-node",
        )
    )
    try:
        exporter.start()
        requests = receiver.wait_for(2, WAIT_S)
    finally:
        exporter.stop()
    assert len(requests) >= 2
    samples = [value(metric(r, c.EXPORTER_SAMPLES.family).sum.data_points[0]) for r in requests[:2]]
    assert samples[1] > samples[0]
    assert attrs(requests[0].resource_metrics[0].resource.attributes)["host.name"] == "sim-node"
    assert metric(requests[0], c.GPU_MEMORY_USED.family).gauge.data_points
