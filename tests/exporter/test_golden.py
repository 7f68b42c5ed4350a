"""Golden expositions: each shipped scenario, served by the whole exporter, must read exactly as committed.

In the manner of node_exporter's ``collector/fixtures/e2e-output.txt``. For every ``scenarios/*.yaml`` the
exporter runs its production path on a simulated node (fake NVML under the real pynvml binding, fake
``/proc``, and where the scenario has pods the emulated API server with its watch and the kubelet
pod-resources gRPC socket; ``--dcgm-compat`` on and the simulated dcgm-exporter as ``--dcgm-exporter-url``)
on a MANUAL clock. It samples at the scenario seconds in ``SAMPLE_AT_S`` and each ``/metrics`` page,
scraped over HTTP, is compared with ``tests/exporter/golden/<scenario>.prom``, every scrape in order.

Regenerate after an intended change, then review the diff like code::

    python -m pytest tests/exporter/test_golden.py --update-golden

What is masked, and why (nothing else is; every GPU, MIG, container, pod, allocation and dcgm-compat
series and every HELP/TYPE line is compared byte for byte):

* ``gpuattr_exporter_sample_duration_seconds``: the wall time the sample took (``time.perf_counter``).
* ``gpuattr_exporter_sample_cpu_seconds_total``: CPU time of the sampler and NVML worker threads
  (``time.thread_time``).
* ``gpuattr_exporter_dcgm_scrape_duration_seconds``: wall time of the HTTP request to dcgm-exporter.
* the ``version`` and ``nvml_binding_version`` labels of ``gpuattr_exporter_build_info``: the release of
  this package and of the installed pynvml, which change without the exposition changing.

A masked value is replaced by ``<masked>`` only after checking that it is a finite number >= 0, so the
series must still be there and sane. Nothing else depends on real time: the wall clock and NVML's
timestamps come from the simulated clock (``gpuattr_exporter_last_sample_timestamp_seconds`` is compared
exactly), GPM spacing follows that clock, and before each sample the test waits until the pod watch holds
exactly the pods alive at that second. No listening address or port appears in the exposition (checked).
NVML and dcgm-exporter timeouts are raised far above what a slow machine needs, so a loaded CI runner
cannot turn a GPU or dcgm-exporter "down".
"""

from __future__ import annotations

import difflib
import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from common import catalog as c
from exporter.app import Exporter, build
from exporter.pods import KubeOwnerResolver
from exporter.settings import ExporterSettings
from simulator.clock import SimClock
from simulator.node import SimulatedNode
from simulator.scenario import Scenario, load_scenario
from tests.conftest import ROOT, SCENARIOS

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_HINT = "python -m pytest tests/exporter/test_golden.py --update-golden"

SAMPLE_AT_S = (0.0, 15.0, 60.0)
"""Scenario seconds of the scrapes: the first sample (no GPM window yet, vLLM still loading), one interval
later, and a minute in (the 70B server of the MIG scenario serving, the TGI pod at its full memory)."""
INTERVAL_S = 15.0
START_WALL = 1_750_000_000.0  # unix seconds at scenario second 0
CATCH_UP_S = 10.0  # most real seconds to wait for the pod watch to show the live pods

MASKED_VALUES = {
    c.EXPORTER_SAMPLE_DURATION.name: "wall time of the sample",
    c.EXPORTER_SAMPLE_CPU.name: "CPU time of the sampler and its NVML threads",
    c.EXPORTER_DCGM_DURATION.name: "wall time of the dcgm-exporter scrape",
}
MASKED_LABELS = {c.EXPORTER_BUILD_INFO.name: ("version", "nvml_binding_version")}
MASK = "<masked>"

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{.*\})? (?P<value>\S+)$")


def normalise(text: str) -> str:
    """``text`` with the volatile values and labels listed above replaced by ``<masked>``.

    A ValueError when a masked value is not a finite number >= 0 or a masked label is missing."""
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if line.startswith("#") or match is None:
            out.append(line)
            continue
        name, labels, value = match["name"], match["labels"] or "", match["value"]
        if name in MASKED_VALUES:
            number = float(value)
            if not (math.isfinite(number) and number >= 0):
                raise ValueError(f"{name} ({MASKED_VALUES[name]}) is not a finite number >= 0: {line}")
            value = MASK
        for label in MASKED_LABELS.get(name, ()):
            labels, found = re.subn(rf'([{{,]{label}=)"(?:[^"\\]|\\.)*"', rf'\1"{MASK}"', labels)
            if found != 1:
                raise ValueError(f"{name} has no {label} label to mask: {line}")
        out.append(f"{name}{labels} {value}")
    return "\n".join(out) + "\n"


def _catch_up(exporter: Exporter, scenario: Scenario, at_s: float) -> None:
    """Wait until the pod watch holds exactly the pods alive at ``at_s`` (pod names come from it)."""
    resolver = exporter.sampler.resolver
    cache = resolver.pods if isinstance(resolver, KubeOwnerResolver) else None
    if cache is None:
        return
    want = {(p.namespace, p.name) for p in scenario.pods if p.alive(at_s)}
    deadline = time.monotonic() + CATCH_UP_S
    while (have := {(m.namespace, m.name) for m in cache.pods()}) != want:
        if time.monotonic() > deadline:
            pytest.fail(f"the pod watch did not catch up at scenario second {at_s:g}: has {have}, alive {want}")
        time.sleep(0.01)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:  # the exporter this test started
        body: bytes = resp.read()
    return body.decode()


def serve(path: Path) -> str:
    """The golden text of one scenario: every scrape in ``SAMPLE_AT_S``, normalised, under a header."""
    scenario = load_scenario(path)
    clock = SimClock(manual=True, start_wall=START_WALL)
    node = SimulatedNode(scenario, clock)
    settings = ExporterSettings(
        listen="127.0.0.1:0",
        interval=INTERVAL_S,
        hostname=scenario.node.name,
        simulate=str(path),  # what --dcgm-exporter-url simulated asks for; the node itself is ours
        kubernetes=bool(scenario.pods),
        dcgm_compat=True,
        dcgm_exporter_url="simulated",
        nvml_timeout=120.0,
        dcgm_timeout=60.0,
    )
    try:
        exporter = build(settings, simulation=node)
    except BaseException:
        node.close()
        raise
    try:
        exporter.server.start()
        addresses = [exporter.server.url, settings.kube_api or "", settings.dcgm_exporter_url or ""]
        ports = {urllib.parse.urlsplit(u).netloc for u in addresses if u}
        pages = []
        for n, at_s in enumerate(SAMPLE_AT_S, 1):
            clock.advance(at_s - clock.now())
            node.sync()
            _catch_up(exporter, scenario, at_s)
            exporter.sampler.sample_once()
            page = _scrape(exporter.server.url)
            leaked = sorted(p for p in ports if p in page)
            assert not leaked, f"a listening address is in the exposition: {leaked}"
            pages.append(f"# ==== scrape {n} of {len(SAMPLE_AT_S)}, at scenario second {at_s:g} ====\n")
            pages.append(normalise(page))
    finally:
        exporter.stop()
    header = (
        f"# Golden exposition of {path.relative_to(ROOT)}: the exporter's /metrics on that simulated node.\n"
        f"# Generated by `{UPDATE_HINT}`; tests/exporter/test_golden.py says what is masked.\n"
    )
    return header + "".join(pages)


def _diff(want: str, got: str, name: str, limit: int = 80) -> str:
    lines = list(difflib.unified_diff(want.splitlines(), got.splitlines(), f"golden/{name}", "served", lineterm=""))
    more = f"\n... {len(lines) - limit} more diff lines" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


SCENARIO_FILES = sorted(SCENARIOS.glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=[p.stem for p in SCENARIO_FILES])
def test_each_scenario_serves_exactly_its_golden_exposition(path: Path, request: pytest.FixtureRequest) -> None:
    golden = GOLDEN / f"{path.stem}.prom"
    got = serve(path)
    if request.config.getoption("--update-golden"):
        GOLDEN.mkdir(exist_ok=True)
        if not golden.exists() or golden.read_text(encoding="utf-8") != got:
            golden.write_text(got, encoding="utf-8")
        return
    if not golden.exists():
        missing = f"tests/exporter/golden/{golden.name} is missing: create it with `{UPDATE_HINT}` and review it"
        pytest.fail(missing, pytrace=False)
    want = golden.read_text(encoding="utf-8")
    if got != want:
        pytest.fail(
            f"{path.name}: the exposition differs from tests/exporter/golden/{golden.name} (- golden, + served).\n"
            f"If the change is intended, run `{UPDATE_HINT}` and review the diff.\n" + _diff(want, got, golden.name),
            pytrace=False,
        )


def test_every_golden_file_belongs_to_a_shipped_scenario() -> None:
    orphans = sorted(p.name for p in GOLDEN.glob("*.prom") if not (SCENARIOS / f"{p.stem}.yaml").exists())
    assert orphans == [], f"golden files without a scenario (delete them): {orphans}"


def test_normalise_masks_only_the_volatile_values_and_refuses_a_broken_one() -> None:
    text = (
        "# HELP gpuattr_exporter_sample_duration_seconds x\n"
        "gpuattr_exporter_sample_duration_seconds 0.0123\n"
        'gpuattr_exporter_build_info{mode="simulated",nvml_binding_version="12.0",version="0.1.0"} 1.0\n'
        'gpuattr_gpu_power_watts{gpu="0",gpu_uuid="GPU-1"} 89.215\n'
        "gpuattr_exporter_samples_total 3.0\n"
    )
    assert normalise(text).splitlines() == [
        "# HELP gpuattr_exporter_sample_duration_seconds x",
        "gpuattr_exporter_sample_duration_seconds <masked>",
        'gpuattr_exporter_build_info{mode="simulated",nvml_binding_version="<masked>",version="<masked>"} 1.0',
        'gpuattr_gpu_power_watts{gpu="0",gpu_uuid="GPU-1"} 89.215',
        "gpuattr_exporter_samples_total 3.0",
    ]
    with pytest.raises(ValueError, match="not a finite number"):
        normalise("gpuattr_exporter_sample_cpu_seconds_total NaN\n")
    with pytest.raises(ValueError, match="no version label"):
        normalise('gpuattr_exporter_build_info{mode="simulated",nvml_binding_version=""} 1.0\n')
