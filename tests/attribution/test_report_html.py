"""The attribution job's HTML report: it opens with the answer (headline figures with units, currency and
the dates covered, or the moment of a one-shot reading), draws each server's memory against its GPU with the
unknown part marked, lists costs, gives the KV budget as vLLM flags vLLM parses, and renders in a real
headless Chromium without console errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from attribution import job
from attribution.collect import Collected
from attribution.report import (
    Result,
    headline,
    html_report,
    memory_bars,
    terminal,
    to_json,
    vllm_flags,
    write_files,
)
from attribution.split import ServerGpu
from common.envflags import parse_args
from common.units import GiB, MiB
from tests.browser import binary, chromium

AT = 1796425200.0  # 2026-12-04 23:00 UTC
TOTAL, CAPACITY, KV = 72 * GiB, 80 * GiB, 50 * GiB
# (weights from the log or unknown, peak KV usage) per server
SERVERS = ((15 * GiB, 0.3), (None, 0.8), (3 * GiB, 0.1))


def _result(*, point_in_time: bool = False, currency: str = "EUR") -> Result:
    servers = [
        ServerGpu(
            namespace=f"ns-{i}",
            pod=f"vllm-{i}",
            model=f"org/model-{i}",
            gpu_uuid=f"GPU-{i:08x}-0000",
            gpu_memory_bytes=CAPACITY,
            total_bytes=TOTAL,
            kv_usage_p50=peak / 2,
            kv_usage_p95=peak,
            kv_usage_max=peak,
            kv_allocated_bytes=KV,
            weights_bytes_log=weights,
            gpu_memory_utilization=0.9,
        )
        for i, (weights, peak) in enumerate(SERVERS)
    ]
    teams = {(f"ns-{i}", f"vllm-{i}"): f"team-{i % 2}" for i in range(len(SERVERS))}
    return job.run(
        Collected(servers, teams),
        window="7d",
        headroom=0.2,
        price=2.5,
        at=AT,
        point_in_time=point_in_time,
        currency=currency,
    )


def _vllm_bytes(value: str) -> int:
    """What vLLM makes of a --kv-cache-memory-bytes value: a plain integer, or an integer with a binary
    suffix (K, M, G, T), or a decimal with a decimal one (k, m, g, t)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)", value)
    assert match is not None, value
    number, suffix = str(match.group(1)), str(match.group(2))
    if suffix.isupper():
        return int(number) * int(2 ** (10 * " KMGT".index(suffix)))
    return int(float(number) * 10 ** (3 * " kmgt".index(suffix or " ")))


@pytest.mark.parametrize("keep", [12.5 * GiB, 12.5 * GiB + 1, 6 * GiB - 3])
def test_the_kv_budget_is_given_in_a_form_vllm_parses_and_never_below_the_budget(keep: float) -> None:
    text = vllm_flags(keep, None)
    value = re.search(r"--kv-cache-memory-bytes=(\S+)", text).group(1)  # type: ignore[union-attr]
    parsed = _vllm_bytes(value)
    assert keep <= parsed < keep + MiB  # rounded up to a whole MiB, no more
    assert f"({parsed / GiB:.2f} GiB of KV cache)" in text  # and the GiB a reader takes in
    assert vllm_flags(keep, 0.712).startswith("--gpu-memory-utilization=0.712 or --kv-cache-memory-bytes=")
    assert vllm_flags(None, 0.712) == ""  # no budget, no flag


def test_every_server_row_gives_its_kv_budget_as_flags_not_raw_bytes() -> None:
    result = _result()
    page = html_report(result)
    for row in result.recommendations.to_dict("records"):
        assert vllm_flags(float(row["kv_keep_bytes"]), float(row["recommended_gpu_memory_utilization"])) in page
        assert f"--kv-cache-memory {row['kv_keep_bytes']}" not in page


def test_a_window_gives_its_dates_and_a_one_shot_reading_its_moment() -> None:
    windowed = html_report(_result())
    assert "7d from 2026-11-27 23:00 UTC to 2026-12-04 23:00 UTC" in windowed
    once = html_report(_result(point_in_time=True))
    assert "at 2026-12-04 23:00 UTC (one reading)" in once
    assert "Window:" not in once and "7d from" not in once
    # the terminal's first line says the same
    assert terminal(_result()).splitlines()[0].endswith("7d from 2026-11-27 23:00 UTC to 2026-12-04 23:00 UTC")
    assert terminal(_result(point_in_time=True)).splitlines()[0].endswith("at 2026-12-04 23:00 UTC (one reading)")


def test_a_server_with_unknown_weights_shows_the_parts_known_and_marks_the_rest_unknown() -> None:
    bars = {b.label: b for b in memory_bars(_result())}
    unknown = bars["ns-1/vllm-1"]
    names = [s.name for s in unknown.segments]
    assert "weights" not in names and names[-1] == "unknown"
    kv_used, kv_idle = KV * SERVERS[1][1], KV * (1 - SERVERS[1][1])
    assert unknown.segments[-1].value == pytest.approx((TOTAL - kv_used - kv_idle) / GiB)
    assert sum(s.value for s in unknown.segments) == pytest.approx(TOTAL / GiB)  # the whole bar is drawn
    assert unknown.marker == CAPACITY / GiB  # against its GPU's capacity
    known = bars["ns-0/vllm-0"]
    assert "unknown" not in [s.name for s in known.segments]
    assert known.segments[0].value == pytest.approx(15 * GiB / GiB)  # the log's weights, first


def test_the_headline_adds_up_the_tables() -> None:
    result = _result()
    head = headline(result)
    assert head["servers"] == len(SERVERS) and head["gpus_held"] == len(SERVERS)
    assert head["memory_held_gib"] == pytest.approx(len(SERVERS) * TOTAL / GiB)
    assert head["kv_idle_gib"] == pytest.approx(sum(KV * (1 - p) for _, p in SERVERS) / GiB, abs=0.01)
    assert head["reclaimable_gib"] == pytest.approx(result.recommendations["reclaimable_bytes"].sum() / GiB, abs=0.01)
    for column in ("cost_held", "cost_idle_kv", "cost_reclaimable"):
        assert head[column] == pytest.approx(result.costs[column].sum())
    assert json.loads(to_json(result))["headline"] == head


def test_cost_tables_carry_the_currency_and_put_the_largest_idle_cost_first() -> None:
    page = html_report(_result(currency="CHF"))
    assert "idle KV cost (CHF)" in page and "USD" not in page
    section = page[page.index("<h3>By namespace</h3>") : page.index("<h3>By model</h3>")]
    order = re.findall(r"<tr><td>(ns-\d)</td>", section)
    idle = {f"ns-{i}": 1 - p for i, (_, p) in enumerate(SERVERS)}
    assert order == sorted(idle, key=lambda ns: -idle[ns]) and len(order) == len(SERVERS)


def test_the_report_is_the_same_bytes_for_the_same_figures() -> None:
    first, second = html_report(_result()), html_report(_result())
    assert first == second and first.count("<svg") == 1
    assert "<dc:date>" not in first and "http://" not in first.split("<svg", 1)[0]  # no date, nothing fetched


@pytest.mark.parametrize("name", ["--currency", "GPUATTR_CURRENCY"])
def test_the_currency_comes_from_the_flag_or_the_environment_and_defaults_to_usd(name: str) -> None:
    parser = job.build_parser()
    base = ["--prometheus", "http://prometheus:9090"]
    assert parse_args(parser, base, environ={}).currency == "USD"
    assert "default: USD" in parser.format_help()
    argv, env = ([*base, name, "EUR"], {}) if name.startswith("--") else (base, {name: "EUR"})
    assert parse_args(parser, argv, environ=env).currency == "EUR"


def test_an_empty_currency_is_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert job.main(["--prometheus", "http://prometheus:9090", "--currency", " "]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--currency" in err


@pytest.mark.skipif(binary() is None, reason="chromium is missing: `make system-deps` installs it")
@pytest.mark.parametrize("point_in_time", [False, True])
def test_the_report_renders_in_chromium_with_its_chart_and_the_jsons_headline(
    tmp_path: Path, point_in_time: bool
) -> None:
    result = _result(point_in_time=point_in_time)
    write_files(result, tmp_path, ["json", "html"])
    expected = json.loads(to_json(result))["headline"]
    with chromium() as page:
        page.load(tmp_path / "report.html")
        assert page.errors == []
        charts = page.charts()
        figures = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('[data-figure]')].map("
            "e => [e.dataset.figure, (e.querySelector('.value') || e).textContent]))"
        )
    assert len(charts) == 1 and all(w > 100 and h > 50 and n > 10 for w, h, n in charts), charts
    assert figures["servers"] == str(expected["servers"])
    assert figures["gpus_held"] == f"{expected['gpus_held']} GPUs"
    for key in ("memory_held_gib", "kv_idle_gib", "reclaimable_gib"):
        assert figures[key] == f"{expected[key]:,.1f} GiB"
    for key in ("cost_held", "cost_idle_kv", "cost_reclaimable"):
        assert figures[key] == f"{expected[key]:,.2f} EUR"
    assert figures["covers"].startswith(expected["covers"])
