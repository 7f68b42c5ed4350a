"""The real-GPU check's device-health judgement: the exporter's series against nvidia-smi's reading."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from common import catalog
from tests.bench.scripts import bench_script
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "exporter" / "golden" / "h100-inference-node.prom"


@pytest.fixture(scope="module")
def check() -> Iterator[ModuleType]:
    with bench_script("real_gpu_check") as module:
        yield module


def _first_scrape() -> str:
    """The golden's first scrape of the simulated H100 node (GPU 0 idle: SM clock 345 MHz, 35 °C)."""
    text = GOLDEN.read_text(encoding="utf-8").split("# ==== scrape 2")[0]
    return "".join(line + "\n" for line in text.splitlines() if line.startswith("gpuattr_gpu_") and "<" not in line)


SMI = {
    "clocks.current.sm": "345",
    "clocks.current.memory": "2619",
    "temperature.gpu": "36",
    "temperature.memory": "33",
    "memory.reserved": "512",
    "remapped_rows.pending": "No",
    "remapped_rows.failure": "No",
}


def test_readings_that_agree_with_nvidia_smi_pass(check: ModuleType) -> None:
    results = check.health_checks(_first_scrape(), 0, SMI)
    assert len(results) == len(check.HEALTH_FIELDS)
    assert all(r.ok for r in results), [r for r in results if not r.ok]


@pytest.mark.parametrize(
    ("field", "smi_value"),
    [
        ("temperature.gpu", "45"),  # 10 °C off
        ("clocks.current.sm", "1980"),  # idle clock served while the GPU boosts
        ("memory.reserved", "600"),
        ("remapped_rows.pending", "Yes"),
        ("temperature.memory", "[N/A]"),  # nvidia-smi has no number: the series must be absent, not served
    ],
)
def test_a_reading_that_differs_from_nvidia_smi_fails(check: ModuleType, field: str, smi_value: str) -> None:
    results = check.health_checks(_first_scrape(), 0, {**SMI, field: smi_value})
    metric = next(getattr(catalog, attr).name for name, attr, *_ in check.HEALTH_FIELDS if name == field)
    failed = [r.what for r in results if not r.ok]
    assert len(failed) == 1 and failed[0].startswith(metric), failed  # that field's check, and no other


def test_a_field_this_nvidia_smi_cannot_be_asked_is_not_judged(check: ModuleType) -> None:
    smi = {k: v for k, v in SMI.items() if k != "remapped_rows.failure"}
    results = check.health_checks(_first_scrape(), 0, smi)
    assert [r.detail for r in results if "not judged" in r.what] == [
        "nvidia-smi does not answer --query-gpu=remapped_rows.failure"
    ]
