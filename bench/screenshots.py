"""Screenshots of the two HTML reports for the README: docs/img/attribution.png and docs/img/review.png.

Each report is made the way a user makes it, from a synthetic history backfilled into Debian's Prometheus
(``promtool tsdb create-blocks-from openmetrics``): the attribution job over a week of six vLLM servers
(start-up logs for four of them, so two show their weights as unknown), and the capacity review of the
last week of a fortnight of the simulated 50-node cluster, where one more team (``vision``) came in three
days before the end, so the chart over time has a step in it. Headless Chromium then loads each page, checks
it reported no errors, and takes a full-page PNG.

    .venv/bin/python bench/screenshots.py [--out docs/img] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attribution.job import main as attribute  # noqa: E402
from attribution.review import main as review  # noqa: E402
from common.units import GiB  # noqa: E402
from simulator import cluster_history, vllm_history  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.peers import prometheus  # noqa: E402

DAY = 86400


def backfill(promtool: str, history: Path, data: Path) -> None:
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=720h", str(history), str(data)],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    history.unlink()


def quietly(main: object, argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)  # type: ignore[operator]
    return int(code)


def attribution_report(promtool: str, work: Path, end: float) -> Path:
    servers = vllm_history.fleet(6)
    with (work / "vllm.om").open("w") as history:
        vllm_history.write_openmetrics(history, servers, end - 7 * DAY, end, step=300.0)
    backfill(promtool, work / "vllm.om", work / "vllm-data")
    logs = work / "logs"
    logs.mkdir()
    for s in servers[:4]:
        (logs / f"{s.namespace}_{s.pod}.log").write_text(
            "INFO 11-21 10:00:01 [gpu_model_runner.py:2000] "
            f"Model loading took {s.weights_bytes / GiB:.4f} GiB memory and 12.5 seconds\n"
        )
    out = work / "attribution"
    with prometheus(work, [], storage=work / "vllm-data") as prom:
        flags = ["--prometheus", prom.url, "--window", "7d", "--at", str(end), "--logs", str(logs)]
        code = quietly(attribute, [*flags, "--out", str(out), "--format", "html,json"])
    if code != 0:
        raise SystemExit(f"gpuattr attribute exited {code}")
    return out / "report.html"


LATE_DAYS = 3
"""The ``vision`` team's pods have series only in the history's last days."""


def vision() -> list[cluster_history.Workload]:
    """Four 4-GPU training pods of a team that came in ``LATE_DAYS`` before the end."""
    return [
        cluster_history.Workload(
            namespace="vision",
            pod=f"finetune-worker-{i}",
            container="trainer",
            team="vision",
            workload_class="training",
            workload_kind="Job",
            workload="finetune",
            model="",
            gpus=4,
            sm=0.6,
            memory_fraction=0.8,
        )
        for i in range(4)
    ]


def review_report(promtool: str, work: Path, end: float) -> Path:
    workloads = [*cluster_history.cluster(), *vision()]
    whole = work / "whole.om"
    with whole.open("w") as history:
        cluster_history.write_openmetrics(history, workloads, end - 14 * DAY, end, step=3600.0)
    came = end - LATE_DAYS * DAY
    with whole.open() as lines, (work / "cluster.om").open("w") as history:
        for line in lines:
            if 'namespace="vision"' in line and float(line.rsplit(" ", 1)[1]) < came:
                continue
            history.write(line)
    whole.unlink()
    backfill(promtool, work / "cluster.om", work / "cluster-data")
    out = work / "review"
    with prometheus(work, [], storage=work / "cluster-data") as prom:
        flags = ["--prometheus", prom.url, "--window", "7d", "--at", str(end), "--resolution", "1h"]
        code = quietly(review, [*flags, "--out", str(out), "--format", "html,json", "--price-per-gpu-hour", "2.5"])
    if code != 0:
        raise SystemExit(f"gpuattr review exited {code}")
    return out / "report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"), help="folder of the PNGs")
    parser.add_argument("--keep", help="keep the histories, databases and reports in this folder")
    args = parser.parse_args(argv)
    promtool = shutil.which("promtool")
    if not promtool or not shutil.which("prometheus"):
        print("needs Debian's prometheus package (promtool, prometheus): make system-deps", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="gpuattr-screenshots-"))
    work.mkdir(parents=True, exist_ok=True)
    end = float(int(time.time()) // 3600 * 3600 - 3600)
    pages = {"attribution": attribution_report(promtool, work, end), "review": review_report(promtool, work, end)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with chromium() as page:
        for name, path in pages.items():
            page.errors.clear()
            page.load(path)
            if page.errors:
                print(f"{path}: the browser reported {page.errors}", file=sys.stderr)
                return 1
            page.screenshot(out / f"{name}.png")
            print(f"wrote {out / f'{name}.png'}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
