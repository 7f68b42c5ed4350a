"""Metric families built one way: from a catalog entry, on prometheus-client's collector interface.

The exporter renders them per sample, the attribution job and the capacity review serve or push them;
all three build families here and hand them to prometheus-client through :class:`Families`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector

from common.catalog import Kind, Metric

__all__ = ["Families", "Family", "family", "one"]


def family(metric: Metric) -> GaugeMetricFamily | CounterMetricFamily:
    """An empty family for a catalog entry; add samples with ``add_metric(label_values, value)``."""
    if metric.kind is Kind.COUNTER:
        return CounterMetricFamily(metric.family, metric.help, labels=list(metric.labels), unit=metric.unit)
    return GaugeMetricFamily(metric.family, metric.help, labels=list(metric.labels), unit=metric.unit)


def one(metric: Metric, value: float, labels: Sequence[str] = ()) -> GaugeMetricFamily | CounterMetricFamily:
    """A family holding a single sample; ValueError unless there is one label value per label of ``metric``."""
    if len(labels) != len(metric.labels):
        raise ValueError(f"{metric.name} has labels {list(metric.labels)}, got values {list(labels)}")
    fam = family(metric)
    fam.add_metric(list(labels), value)
    return fam


class Families(Collector):
    """A collector that serves the families it was last given (thread-safe replacement).

    ``generate_latest(Families(fams))`` renders a list; registered in a ``CollectorRegistry`` it serves
    whatever :meth:`replace` put there last, so a failed re-run can leave the previous figures in place.
    """

    def __init__(self, fams: Iterable[Family] = ()) -> None:
        self._lock = threading.Lock()
        self._fams: list[Family] = list(fams)

    def replace(self, fams: Iterable[Family]) -> None:
        new = list(fams)
        with self._lock:
            self._fams = new

    def collect(self) -> Iterator[Family]:
        with self._lock:
            current = list(self._fams)
        return iter(current)
