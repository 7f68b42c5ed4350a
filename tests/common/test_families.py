"""common.families: a catalog entry becomes the right prometheus-client family; Families serves the latest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from common import catalog as c
from common.catalog import Group, Kind, Metric
from common.families import Families, family, one

WIDGETS = Metric("test_widgets_total", Kind.COUNTER, "Widgets made.", ("colour",), Group.EXPORTER)
HEAT = Metric("test_heat_celsius", Kind.GAUGE, "How hot.", ("gpu",), Group.EXPORTER, unit="celsius")
BUILD = Metric("test_build_info", Kind.INFO, "What runs.", ("version",), Group.EXPORTER)


def _text(*fams: Family) -> str:
    return generate_latest(Families(fams)).decode()


def test_a_counter_entry_renders_as_a_counter_whose_sample_ends_in_total() -> None:
    fam = family(WIDGETS)
    assert isinstance(fam, CounterMetricFamily)
    fam.add_metric(["red"], 3)
    text = _text(fam)
    assert "# HELP test_widgets_total Widgets made.\n" in text
    assert "# TYPE test_widgets_total counter\n" in text
    assert 'test_widgets_total{colour="red"} 3.0\n' in text


def test_a_gauge_entry_renders_as_a_gauge_with_its_unit_in_openmetrics() -> None:
    fam = family(HEAT)
    assert isinstance(fam, GaugeMetricFamily) and not isinstance(fam, CounterMetricFamily)
    fam.add_metric(["0"], 41.5)
    text = _text(fam)
    assert "# TYPE test_heat_celsius gauge\n" in text
    assert 'test_heat_celsius{gpu="0"} 41.5\n' in text
    openmetrics: bytes = generate_openmetrics(Families([fam]))  # type: ignore[no-untyped-call]
    assert "# UNIT test_heat_celsius celsius\n" in openmetrics.decode()


def test_an_info_entry_is_a_gauge_fixed_at_one() -> None:
    text = _text(one(BUILD, 1, ["1.2.3"]))
    assert "# TYPE test_build_info gauge\n" in text
    assert 'test_build_info{version="1.2.3"} 1.0\n' in text


@pytest.mark.parametrize("metric", [c.GPU_ENERGY, c.EXPORTER_SAMPLES, c.CONTAINER_MEMORY, c.GPU_POWER])
def test_catalog_entries_render_with_the_type_and_name_the_catalog_gives(metric: Metric) -> None:
    fam = one(metric, 2, ["x"] * len(metric.labels))
    text = _text(fam)
    assert f"# TYPE {metric.name} {'counter' if metric.kind is Kind.COUNTER else 'gauge'}\n" in text
    sample = next(line for line in text.splitlines() if not line.startswith("#"))
    assert sample.startswith(metric.name + ("{" if metric.labels else " ")) and sample.endswith(" 2.0")


def test_one_holds_a_single_sample_with_its_labels_and_refuses_a_wrong_count() -> None:
    fam = one(WIDGETS, 7, ["blue"])
    assert [(s.name, s.labels, s.value) for s in fam.samples] == [("test_widgets_total", {"colour": "blue"}, 7)]
    with pytest.raises(ValueError, match=r"test_widgets_total has labels \['colour'\], got values \[\]"):
        one(WIDGETS, 1, [])  # prometheus-client would serve it without its label
    with pytest.raises(ValueError, match="got values"):
        one(HEAT, 1, ["0", "1"])


def test_a_registered_families_serves_whatever_was_put_there_last() -> None:
    registry = CollectorRegistry()
    fams = Families([one(WIDGETS, 1, ["red"])])
    registry.register(fams)
    assert 'test_widgets_total{colour="red"} 1.0' in generate_latest(registry).decode()
    fams.replace([one(WIDGETS, 2, ["green"]), one(HEAT, 40, ["0"])])
    text = generate_latest(registry).decode()
    assert 'test_widgets_total{colour="green"} 2.0' in text and 'test_heat_celsius{gpu="0"} 40.0' in text
    assert 'colour="red"' not in text
    fams.replace([])
    assert "test_" not in generate_latest(registry).decode()


def test_a_replacement_that_fails_half_way_leaves_the_previous_families_in_place() -> None:
    fams = Families([one(WIDGETS, 1, ["red"])])

    def half_built() -> Iterator[Family]:
        yield one(HEAT, 99, ["0"])
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        fams.replace(half_built())
    assert [f.name for f in fams.collect()] == ["test_widgets"]


def test_a_collection_in_progress_keeps_the_families_it_started_with() -> None:
    fams = Families([one(WIDGETS, 1, ["red"]), one(HEAT, 40, ["0"])])
    started = fams.collect()
    fams.replace([one(BUILD, 1, ["2"])])
    assert [f.name for f in started] == ["test_widgets", "test_heat_celsius"]
    assert [f.name for f in fams.collect()] == ["test_build_info"]
