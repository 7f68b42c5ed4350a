"""Scenario files: the shipped ones load; broken ones are refused naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.scenario import ScenarioError, load_scenario, parse_scenario
from tests.conftest import SCENARIOS


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_loads_and_is_consistent(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.gpus and scenario.processes
    containers = {f"{p.namespace}/{p.name}/{c.name}" for p in scenario.pods for c in p.containers}
    assert all(proc.container in containers for proc in scenario.processes if proc.container)


def test_the_inference_node_has_what_the_issue_asks_for() -> None:
    s = load_scenario(SCENARIOS / "h100-inference-node.yaml")
    assert len(s.gpus) == 4 and all("H100" in g.model for g in s.gpus)
    on_gpu3 = [p for p in s.processes if p.gpus == [3]]
    assert len({p.container for p in on_gpu3}) == 2  # two pods time-sliced on one GPU
    assert any("ipykernel_launcher" in p.cmdline for p in s.processes)  # the idle notebook


def test_the_mig_node_has_eight_gpus_and_a_partitioned_one() -> None:
    s = load_scenario(SCENARIOS / "h100-8gpu-mig-node.yaml")
    assert len(s.gpus) == 8 and s.gpus[7].mig and len(s.gpus[7].mig) == 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x", "gpus": []}, "gpus"),
        ({"name": "x", "gpus": [{"index": 1}]}, "indexes 0..0"),
        (
            {"name": "x", "gpus": [{"index": 0}], "processes": [{"pid": 1, "name": "a", "gpus": [3], "memory": 1}]},
            "GPU 3",
        ),
        (
            {
                "name": "x",
                "gpus": [{"index": 0}],
                "processes": [{"pid": 1, "name": "a", "gpus": [0], "memory": "lots"}],
            },
            "processes.0.memory",
        ),
        (
            {
                "name": "x",
                "gpus": [{"index": 0, "mig": [{"gi": 1, "profile": "3g.40gb"}]}],
                "processes": [{"pid": 1, "name": "a", "gpus": [0], "memory": 1}],
            },
            "MIG-enabled",
        ),
        ({"name": "x", "gpus": [{"index": 0, "mig": [{"gi": 1, "profile": "big"}]}]}, "MIG profile"),
        ({"name": "x", "gpus": [{"index": 0}], "colour": "blue"}, "colour"),
        ({"name": "x", "gpus": [{"index": 0, "failing": {"nvmlDeviceGetName": "OOPS"}}]}, "unknown NVML error 'OOPS'"),
        (
            {
                "name": "x",
                "gpus": [{"index": 0}],
                "processes": [{"pid": 1, "name": "a", "gpus": [0], "memory": 1, "container": "a/b/c"}],
            },
            "no pod defines",
        ),
        (
            {"name": "x", "gpus": [{"index": 0, "hangs": [{"function": "nvmlDeviceGetName", "at": 9, "until": 9}]}]},
            "hang of nvmlDeviceGetName: until (9.0) must be after at (9.0)",
        ),
        (
            {
                "name": "x",
                "gpus": [{"index": 0}],
                "pods": [{"namespace": "a", "name": "b", "containers": [{"name": "c"}], "start": 60, "stop": 30}],
            },
            "pod a/b: stop (30.0) must be after start (60.0)",
        ),
    ],
)
def test_a_broken_scenario_is_refused_naming_the_problem(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match="scenario <scenario>") as err:
        parse_scenario(raw)
    assert message in str(err.value)


def test_an_unreadable_or_invalid_yaml_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"missing\.yaml: cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: not valid YAML"):
        load_scenario(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ScenarioError, match="expected a mapping"):
        load_scenario(listy)


def _one_gpu(*processes: dict[str, object], gpu: dict[str, object] | None = None) -> dict[str, object]:
    return {"name": "x", "gpus": [{"index": 0, "memory": "80GiB", **(gpu or {})}], "processes": list(processes)}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            _one_gpu({"pid": 7, "name": "a", "gpus": [0], "memory": "96GiB"}),
            "process 7: holds up to 96.00 GiB, more than the 80.00 GiB GPU 0 has",
        ),
        (
            _one_gpu({"pid": 7, "name": "a", "gpus": [0], "memory": {"points": [[0, "1GiB"], [60, "81GiB"]]}}),
            "process 7: holds up to 81.00 GiB",
        ),
        (
            _one_gpu(
                {"pid": 7, "name": "a", "gpus": [0], "memory": "50GiB"},
                {"pid": 8, "name": "b", "gpus": [0], "memory": "40GiB", "start": 30},
            ),
            "processes 7, 8 hold up to 90.00 GiB together on GPU 0 at second 30",
        ),
        (_one_gpu({"pid": 7, "name": "a", "gpus": [0], "memory": "1GiB", "sm": 1.5}), "process 7: 'sm' is a fraction"),
        (
            _one_gpu({"pid": 7, "name": "a", "gpus": [0], "memory": "1GiB", "mem_bw": -0.1}),
            "process 7: 'mem_bw' is a fraction of time, 0 to 1, got -0.1",
        ),
        ({"name": "x", "gpus": [{"index": i} for i in range(100_000)]}, "gpus: 100,000 listed, at most 64"),
        (
            _one_gpu(*({"pid": p, "name": "a", "gpus": [0], "memory": 1} for p in range(1, 60_002))),
            "processes: 60,001 listed, at most 50,000",
        ),
    ],
)
def test_a_scenario_beyond_its_hardware_or_bounds_is_refused_naming_it(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match="scenario <scenario>") as err:
        parse_scenario(raw)
    assert message in str(err.value)


def test_processes_that_take_turns_on_a_gpu_may_each_fill_most_of_it() -> None:
    scenario = parse_scenario(
        _one_gpu(
            {"pid": 7, "name": "a", "gpus": [0], "memory": "70GiB", "stop": 30},
            {"pid": 8, "name": "b", "gpus": [0], "memory": "70GiB", "start": 30},
        )
    )
    assert [p.pid for p in scenario.processes] == [7, 8]
