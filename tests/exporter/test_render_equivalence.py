"""The fast renderer writes exactly what prometheus-client writes, for any label value or help text."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import exposition as text_format
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from common.families import Families
from exporter.dcgm_compat import UnsuffixedCounter
from exporter.render import families, render_openmetrics, render_text
from exporter.sampler import Sampler, SamplerOptions
from exporter.snapshot import CommandNameResolver
from simulator.scenario import load_scenario
from tests.conftest import SCENARIOS, Sim


def _library(fams: list[Family]) -> tuple[bytes, bytes]:
    holder = Families(fams)
    return text_format.generate_latest(holder), openmetrics_format.generate_latest(holder)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("name", ["h100-inference-node.yaml", "h100-8gpu-mig-node.yaml"])
def test_the_shipped_scenarios_render_byte_for_byte_as_the_library_does(
    name: str, simulate: Callable[..., Sim]
) -> None:
    sim = simulate(load_scenario(SCENARIOS / name), start=60)
    sampler = Sampler(sim.reader, CommandNameResolver("/nonexistent", sim.reader.process_name), SamplerOptions())
    sampler.sample_once()
    sim.clock.advance(5)
    snap = sampler.sample_once()
    fams = families(snap, hostname="h", dcgm_compat=True, version="t")
    assert len(render_text(fams)) > 10_000
    # dcgm-exporter's counters keep their names without _total, which the library cannot write: they are
    # checked on their own below
    unsuffixed = [f for f in fams if isinstance(f, UnsuffixedCounter)]
    library = [f for f in fams if not isinstance(f, UnsuffixedCounter)]
    assert unsuffixed and library
    assert (render_text(library), render_openmetrics(library)) == _library(library)


def test_a_dcgm_counter_keeps_its_name_in_text_and_is_untyped_in_openmetrics() -> None:
    fam = UnsuffixedCounter("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Total energy (in mJ).", ["gpu"])
    fam.add_metric(["0"], 5)
    assert render_text([fam]).decode() == (
        "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy (in mJ).\n"
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 5.0\n'
    )
    om = render_openmetrics([fam]).decode()
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION unknown\n" in om
    assert 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 5.0\n' in om
    parsed = list(parse_openmetrics(om))  # type: ignore[no-untyped-call]  # valid OM: counters need _total
    assert [(f.name, f.type, [s.value for s in f.samples]) for f in parsed] == [
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "unknown", [5.0])
    ]


texts = st.text(st.characters(codec="utf-8"), max_size=20)
values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(2**53), max_value=2**53)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=5), texts, values)
def test_any_label_value_and_help_text_render_as_the_library_does(
    rows: list[tuple[str, str]], doc: str, value: float
) -> None:
    gauge = GaugeMetricFamily("gpuattr_test_bytes", doc, labels=["b_label", "a_label"], unit="bytes")
    counter = CounterMetricFamily("gpuattr_test", doc, labels=["x"])
    for a, b in rows:
        gauge.add_metric([b, a], value)
        counter.add_metric([a], abs(value) if not math.isnan(value) else 0)
    info = InfoMetricFamily("gpuattr_thing", doc, value={"k": rows[0][0]})
    odd = GaugeMetricFamily("gpuattr.dotted", doc, value=1)  # not a legacy name: the library writes it
    fams: list[Family] = [gauge, counter, info, odd]
    assert (render_text(fams), render_openmetrics(fams)) == _library(fams)
