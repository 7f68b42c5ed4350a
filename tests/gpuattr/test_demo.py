"""The demo: its tables say which activity measure each column is, and its next steps run against it."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from attribution.recommend import Packing
from attribution.report import Result, terminal
from common import catalog as c
from common.exposition import Sample
from common.fetch import fetch
from gpuattr.cli import main
from simulator.demo import summary
from tests.conftest import ROOT

UUID = "GPU-00000000-0000-0000-0000-000000000000"


def _gpu(name: str, value: float, **extra: str) -> Sample:
    return ({"gpu": "0", "gpu_uuid": UUID, "mig_instance": "", **extra}, value)


def _gpu_table(metrics: dict[str, list[Sample]]) -> dict[str, str]:
    """The first GPU's row of the summary's GPU table, by column header (spans from the dashes line)."""
    header, dashes, row = summary(metrics).split("\n\n")[0].splitlines()[:3]
    spans = [m.span() for m in re.finditer(r"-+", dashes)]
    return {header[a:b].strip(): row[a:b].strip() for a, b in spans}


def test_the_gpu_table_shows_kernel_time_and_sm_activity_apart() -> None:
    metrics = {
        c.GPU_INFO.name: [({"gpu": "0", "gpu_model": "H100"}, 1.0)],
        c.GPU_MEMORY_TOTAL.name: [_gpu("total", 80 * 2**30)],
        c.GPU_MEMORY_USED.name: [_gpu("used", 8 * 2**30)],
        c.GPU_UTILIZATION.name: [({"gpu": "0", "gpu_uuid": UUID}, 0.85)],
        c.GPU_SM_ACTIVE.name: [_gpu("sm", 0.85, source="nvml"), _gpu("sm", 0.25, source="gpm")],
    }
    row = _gpu_table(metrics)
    assert list(row) == ["GPU", "model", "used", "total", "kernel time", "SM active", "DRAM bw"]
    assert (row["kernel time"], row["SM active"]) == ("85.0%", "25.0%")
    # only the NVML fallback, which is kernel time: the SM column says it does not know
    metrics[c.GPU_SM_ACTIVE.name] = [_gpu("sm", 0.85, source="nvml")]
    assert _gpu_table(metrics)["SM active"] == "-"
    legend = summary(metrics)
    for metric in (c.CONTAINER_KERNEL_ACTIVE, c.CONTAINER_SM_ACTIVE, c.GPU_UTILIZATION, c.GPU_SM_ACTIVE):
        assert metric.name in legend


def _result(gpus_needed: int, gpus_today: int) -> Result:
    keys = ["namespace", "pod", "model", "gpu_uuid"]
    sizes = ["total_bytes", "weights_bytes", "kv_used_max_bytes", "kv_idle_bytes", "overhead_bytes"]
    split = pd.DataFrame(
        [["llm", "a", "m", UUID, *([2**30] * len(sizes)), 0]], columns=[*keys, *sizes, "reclaimable_bytes"]
    )
    recs = pd.DataFrame([["llm", "a", "m", UUID, 0.9]], columns=[*keys, "recommended_gpu_memory_utilization"])
    packing = Packing(gpus_today=gpus_today, gpus_needed=gpus_needed, placement={}, refused={})
    return Result(split, recs, pd.DataFrame(), packing, [], "5m")


@pytest.mark.parametrize(("needed", "today", "instead"), [(1, 2, True), (2, 2, False), (3, 2, False)])
def test_fit_on_fewer_gpus_is_said_only_when_fewer(needed: int, today: int, instead: bool) -> None:
    text = terminal(_result(needed, today))
    assert (f"fit on {needed} GPU(s) instead of {today}" in text) is instead
    assert "instead of" not in text or instead
    assert f"{today}" in text.split("Right-sized", 1)[1]


def _lines_until(proc: subprocess.Popen[str], last: str, timeout_s: float) -> list[str]:
    assert proc.stdout is not None
    deadline, lines = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith(last):
            return lines
    raise AssertionError("the demo never printed " + repr(last) + ":\n" + "\n".join(lines))


def test_the_next_steps_the_demo_prints_run_against_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = [sys.executable, "-m", "gpuattr", "demo", "--listen", "127.0.0.1:0", "--interval", "0.5", "--run-for", "120"]
    proc = subprocess.Popen(
        demo, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ}
    )
    try:
        out = _lines_until(proc, "Serving for", timeout_s=90)
        steps = out[out.index("Next, while it serves (in another terminal):") + 1 : -1]
        commands = shlex.split(
            " ".join(s.strip().rstrip("\\") for s in steps if s.strip().startswith(("gpuattr", "--")))
        )
        assert commands[1] == "attribute" and Path(commands[0]).name == "gpuattr", commands
        vllm = [arg for flag, arg in itertools.pairwise(commands) if flag == "--vllm"]
        assert len(vllm) == 2, steps  # both simulated vLLM servers of the default scenario
        curls = [shlex.split(s) for s in steps if s.strip().startswith("curl") and ">" in s]
        logs = tmp_path / "demo-logs"
        logs.mkdir()
        for _curl, _s, url, _gt, target in curls:
            (tmp_path / target).write_bytes(fetch(url, timeout_s=10).body)
        piped = next(s for s in steps if "gpuattr vllm-log -" in s)
        log_url = shlex.split(piped)[2]
        log = tmp_path / "one.log"
        log.write_bytes(fetch(log_url, timeout_s=10).body)
        capsys.readouterr()
        assert main(["vllm-log", str(log), "--json"]) == 0
        facts = json.loads(capsys.readouterr().out)
        assert facts["weights_bytes"] > 0 and facts["kv_cache_bytes"] > 0  # what the server's log says it holds
        monkeypatch.chdir(tmp_path)  # --logs demo-logs, as the printed commands made it
        assert main([*commands[1:], "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        servers = sorted(f"{r['namespace']}/{r['pod']}" for r in report["split"])
        assert servers == sorted(spec.split("=")[0] for spec in vllm)
        assert {r["weights_source"] for r in report["split"]} == {"log"}  # the start-up logs the steps fetched
    finally:
        proc.terminate()
        proc.wait(timeout=30)
