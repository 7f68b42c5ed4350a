"""Optional OTLP/gRPC push: each snapshot's metric families, converted to OpenTelemetry metric data.

Switched on by ``--otlp-endpoint``; OpenTelemetry (``gpu-attribution[otlp]``) is imported only here.

Mapping from the Prometheus families the exporter serves:

* names are the catalog's family names: gauges as served (``gpuattr_gpu_memory_used_bytes``), counters
  without ``_total`` (``gpuattr_exporter_samples``), as OTLP names counters; a collector's Prometheus
  exporter adds ``_total`` back;
* gauge, info and untyped families → ``Gauge``; counters → monotonic cumulative ``Sum`` whose start
  time is the pusher's creation; other types (histograms, summaries) are left out;
* units: bytes→``By``, seconds→``s``, ratio→``1``, watts→``W``, joules→``J``, celsius→``Cel`` (UCUM);
* data point attributes are the sample's labels without the empty ones; every point carries the
  snapshot's timestamp;
* a family whose values are all integers is sent as integers, else as doubles.

An export blocks the calling (sampler) thread for at most ``timeout_s``: the SDK retries a transient
error (receiver down) with backoff 1 s, 2 s, 4 s… only while the next try still fits in ``timeout_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.metrics_core import Metric as Family

from common import catalog as c
from common.families import family
from exporter import __version__
from exporter.snapshot import Snapshot

log = logging.getLogger("gpuattr.otlp")

SERVICE_NAME = "gpuattr-exporter"
UNITS = {"bytes": "By", "seconds": "s", "ratio": "1", "watts": "W", "joules": "J", "celsius": "Cel"}
"""OpenMetrics unit → UCUM unit (what OTLP expects); other units pass unchanged."""

_SDK_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
)


class _QuietInsidePush(logging.Filter):
    """Holds back the SDK's per-failure log lines while a push runs on this thread; keeps the last.

    The pusher logs once per state change itself and names the reason the SDK gave.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def begin(self) -> None:
        self._local.active = True
        self._local.last = ""

    def end(self) -> str:
        """Stop holding back; return the last held-back message at warning level or above."""
        self._local.active = False
        return str(getattr(self._local, "last", ""))

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(self._local, "active", False):
            return True
        if record.levelno >= logging.WARNING:
            self._local.last = record.getMessage()
        return False


_quiet = _QuietInsidePush()
for _name in _SDK_LOGGERS:
    # First in line: the SDK's own DuplicateFilter would otherwise drop a repeated reason before we see it.
    logging.getLogger(_name).filters.insert(0, _quiet)


def _seconds_to_ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _number(value: float, as_int: bool) -> int | float:
    return int(value) if as_int else float(value)


def _points(fam: Family, time_ns: int, start_ns: int) -> list[NumberDataPoint]:
    samples = [s for s in fam.samples if not s.name.endswith("_created")]
    as_int = all(isinstance(s.value, int) and not isinstance(s.value, bool) for s in samples)
    return [
        NumberDataPoint(
            attributes={k: v for k, v in s.labels.items() if v != ""},
            start_time_unix_nano=start_ns,
            time_unix_nano=time_ns,
            value=_number(s.value, as_int),
        )
        for s in samples
    ]


def to_metric(fam: Family, time_ns: int, start_ns: int) -> Metric | None:
    """One family as an OTLP metric; None for a type OTLP gets no number from (histogram, summary)."""
    unit = UNITS.get(fam.unit, fam.unit)
    if fam.type == "counter":
        data: Gauge | Sum = Sum(
            data_points=_points(fam, time_ns, start_ns),
            aggregation_temporality=AggregationTemporality.CUMULATIVE,
            is_monotonic=True,
        )
    elif fam.type in ("gauge", "info", "unknown", "untyped", "stateset"):
        data = Gauge(data_points=_points(fam, time_ns, 0))
    else:
        return None
    return Metric(name=fam.name, description=fam.documentation, unit=unit, data=data)


class OtlpPusher:
    """Pushes each snapshot to an OTLP/gRPC receiver; a listener for ``Sampler.listeners``.

    ``endpoint`` is ``host:port`` (or ``http://host:port``, which implies ``insecure``); ``insecure``
    sends plaintext gRPC, else TLS with the system's roots. ``timeout_s`` bounds one push, retries
    included; ``headers`` go with every request (e.g. an ``authorization`` token).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        insecure: bool = False,
        hostname: str = "",
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not endpoint:
            raise ValueError("--otlp-endpoint / GPUATTR_OTLP_ENDPOINT: expected host:port, got ''")
        if timeout_s <= 0:
            raise ValueError(f"OTLP push timeout must be positive, got {timeout_s}")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.results: dict[str, int] = {"success": 0, "failure": 0}
        self.start_ns = time.time_ns()  # unix ns: start time of every cumulative Sum
        self._failing = False
        self._closed = False
        self._lock = threading.Lock()
        attributes: dict[str, Any] = {"service.name": SERVICE_NAME, "service.version": __version__}
        if hostname:
            attributes["host.name"] = hostname
        self._resource = Resource.create(attributes)
        self._scope = InstrumentationScope("gpuattr.exporter", __version__)
        self._exporter = OTLPMetricExporter(
            endpoint=endpoint,
            insecure=True if endpoint.startswith("http://") else insecure,
            headers=dict(headers) if headers else None,
            timeout=timeout_s,
        )

    def metrics_data(self, snapshot: Snapshot, families: list[Family]) -> MetricsData:
        """The families of one snapshot as the OTLP request's payload."""
        time_ns = _seconds_to_ns(snapshot.reading.timestamp)
        metrics = [m for fam in families if (m := to_metric(fam, time_ns, self.start_ns)) is not None]
        scope = ScopeMetrics(scope=self._scope, metrics=metrics, schema_url="")
        return MetricsData(
            resource_metrics=[ResourceMetrics(resource=self._resource, scope_metrics=[scope], schema_url="")]
        )

    def push(self, snapshot: Snapshot, families: list[Family]) -> bool:
        """Export one snapshot; never raises. True when the receiver accepted it."""
        if self._closed:
            return False
        reason = ""
        _quiet.begin()
        try:
            ok = self._exporter.export(self.metrics_data(snapshot, families)) is MetricExportResult.SUCCESS
        except Exception as exc:  # a value the encoder refuses, a gRPC fault: this push only
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        finally:
            held_back = _quiet.end()
        with self._lock:
            self.results["success" if ok else "failure"] += 1
            was_failing, self._failing = self._failing, not ok
        if not ok and not was_failing:
            log.warning(
                "OTLP push to %s failed (%s); retrying every sample, logging again when it recovers",
                self.endpoint,
                reason or held_back or "no detail",
            )
        elif ok and was_failing:
            log.info("OTLP push to %s works again", self.endpoint)
        return ok

    def families(self) -> list[Family]:
        """``gpuattr_exporter_otlp_exports_total{result}``, for ``SamplerOptions.extra_families``."""
        fam = family(c.EXPORTER_OTLP_EXPORTS)
        with self._lock:
            counts = dict(self.results)
        for result, n in sorted(counts.items()):
            fam.add_metric([result], n)
        return [fam]

    def close(self) -> None:
        """Stop pushing; a push in flight gives up its retries. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._exporter.shutdown(timeout_millis=self.timeout_s * 1000)
