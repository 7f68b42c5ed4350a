"""The review's Markdown and HTML: the same sections, tables and lists in both (they are laid out from one
structure), names quoted for each format, and every file format written."""

from __future__ import annotations

import html as h
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from attribution.review import cli, html, main, markdown, write
from attribution.review.render import DIMENSION_HEADER, dimension_header, headline
from common.envflags import parse_args
from tests.attribution.review.conftest import HOSTILE_TEAM, PIPED_TEAM, Review
from tests.browser import binary, chromium


@dataclass
class Section:
    header: list[str] | None = None
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


def _md_cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    return [re.sub(r"\\(.)", r"\1", cell.strip()) for cell in re.split(r"(?<!\\)\|", inner)]


def md_sections(text: str) -> dict[str, Section]:
    """Each ``##`` section of a Markdown review: its table's header and rows (cells unescaped), list and text."""
    out: dict[str, Section] = {}
    current = Section()
    for line in text.splitlines():
        if line.startswith("## "):
            current = out.setdefault(line[3:], Section())
        elif line.startswith("|---"):
            continue
        elif line.startswith("| "):
            if current.header is None:
                current.header = _md_cells(line)
            else:
                current.rows.append(_md_cells(line))
        elif line.startswith("- "):
            current.items.append(line[2:])
        elif line and not line.startswith("# "):
            current.text.append(line)
    return out


class _HtmlSections(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, Section] = {}
        self.current = Section()
        self.open: str | None = None  # the tag whose text is being read
        self.buffer = ""
        self.row: list[str] = []
        self.header_row = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "th", "td", "li", "p"):
            self.open, self.buffer = tag, ""
        elif tag == "tr":
            self.row, self.header_row = [], False

    def handle_data(self, data: str) -> None:
        if self.open:
            self.buffer += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self.current = self.sections.setdefault(self.buffer, Section())
        elif tag in ("th", "td"):
            self.row.append(self.buffer)
            self.header_row = tag == "th"
        elif tag == "tr":
            if self.header_row:
                self.current.header = self.row
            else:
                self.current.rows.append(self.row)
        elif tag == "li":
            self.current.items.append(self.buffer)
        elif tag == "p":
            self.current.text.append(self.buffer)
        self.open = None


def html_sections(text: str) -> dict[str, Section]:
    parser = _HtmlSections()
    parser.feed(text)
    parser.close()
    return parser.sections


def _same_in_both(review: dict[str, Any]) -> dict[str, Section]:
    md, web = md_sections(markdown(review)), html_sections(html(review))
    assert list(md) == list(web)  # the same sections in the same order
    for title, section in md.items():
        assert section.header == web[title].header, title
        assert len(section.rows) == len(web[title].rows), title
        assert section.rows == web[title].rows, title
        assert section.items == web[title].items, title
        assert section.text == web[title].text, title
    # one table per dimension, a row per name: the comparison above compared something
    for dimension, rows in review["by"].items():
        title = f"By {dimension.replace('_', ' ')}"
        assert md[title].header == list(dimension_header(review.get("currency", "USD")))
        assert len(md[title].rows) == len(rows) and all(len(r) == len(DIMENSION_HEADER) for r in md[title].rows)
    return md


def test_markdown_and_html_carry_the_same_tables_lists_and_text(small_review: dict[str, Any]) -> None:
    md = _same_in_both(small_review)
    # largest idle cost first: 2.5, 1 and 0 idle GPUs over the day
    assert [r[0] for r in md["By team"].rows] == [HOSTILE_TEAM, "(none)", PIPED_TEAM]
    assert md["By team"].rows[2][3] == "-"  # no memory share
    assert md["Consolidation"].items == ["not moved: ns<1>/train-0: training keeps its GPUs"]
    assert len(md["SLO attainment"].items) == 2
    assert md["Missing inputs"].items == small_review["problems"]


@pytest.mark.slow
def test_the_backfilled_reviews_markdown_and_html_carry_the_same_tables(review: Review) -> None:
    md = _same_in_both(review.result)
    assert "research" in {r[0] for r in md["By team"].rows}
    written = review.out
    assert md_sections((written / "report.md").read_text()) == md
    assert html_sections((written / "report.html").read_text()) == md


def test_the_html_escapes_names_in_cells_and_lists(small_review: dict[str, Any]) -> None:
    page = html(small_review)
    assert HOSTILE_TEAM not in page and "ns<1>" not in page and "m&m" not in page
    assert "<td>&lt;b&gt;&amp;x</td>" in page
    web = html_sections(page)
    assert web["By team"].rows[0][0] == HOSTILE_TEAM  # the reader sees the name as it is
    assert web["Week over week"].items[0].startswith(f"team {HOSTILE_TEAM}: ")
    assert web["Missing inputs"].items == ["http://prometheus:9090: <timeout>"]


def test_a_pipe_in_a_name_stays_inside_its_markdown_cell(small_review: dict[str, Any]) -> None:
    lines = [line for line in markdown(small_review).splitlines() if PIPED_TEAM.replace("|", "\\|") in line]
    assert len(lines) == 1
    assert _md_cells(lines[0])[0] == PIPED_TEAM and len(_md_cells(lines[0])) == len(DIMENSION_HEADER)


@pytest.mark.slow
def test_the_review_is_written_in_every_format(review: Review) -> None:
    out = review.out
    assert "<table" in (out / "report.html").read_text()
    assert "research" in (out / "report.md").read_text()
    by_team = pd.read_csv(out / "by_team.csv")
    assert "research" in set(by_team["name"])
    parquet = pd.read_parquet(out / "by_team.parquet").set_index("name")
    assert parquet.loc["research", "gpus_allocated"] == pytest.approx(64, abs=0.5)
    written = json.loads((out / "review.json").read_text())
    assert written["by"]["team"] == review.result["by"]["team"]


def test_an_unknown_format_is_refused_before_anything_is_written(small_review: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'pdf'"):
        write(small_review, tmp_path / "out", ["md", "pdf"])
    assert not (tmp_path / "out").exists()
    assert [p.name for p in write(small_review, tmp_path / "out", ["md", "csv"])] == [
        "report.md",
        "by_team.csv",
        "by_namespace.csv",
        "by_model.csv",
    ]


def _dated(review: dict[str, Any]) -> dict[str, Any]:
    """``review`` as the command line hands it to the renderers: with its end, currency and headline."""
    out = {**review, "end": 1796425200.0, "currency": "EUR"}  # 2026-12-04 23:00 UTC
    out["models"] = [
        {"model": "small", "tokens": 4e6, "traffic_share": 0.8, "gpu_share": 0.3},
        {"model": "big", "tokens": 1e6, "traffic_share": 0.2, "gpu_share": 0.7},
    ]
    return {**out, "headline": headline(out)}


def test_both_formats_open_with_the_headline_and_the_dates_covered(small_review: dict[str, Any]) -> None:
    review = _dated(small_review)
    md = _same_in_both(review)
    assert list(md)[:2] == ["Headline", "Allocated against used, by team"]
    assert markdown(review).startswith("# GPU capacity review, 1d from 2026-12-03 23:00 UTC to 2026-12-04 23:00 UTC\n")
    teams = review["by"]["team"]
    held = sum(r["gpus_allocated"] for r in teams)
    values = {row[0]: row[1] for row in md["Headline"].rows}
    assert values["GPUs held"] == f"{held:.1f} GPUs on average"
    assert values["GPU cost"] == f"{sum(r['cost'] for r in teams):,.0f} EUR"
    assert values["Idle cost"].startswith(f"{sum(r['cost_idle'] for r in teams):,.0f} EUR")
    freed = review["consolidation"]["gpus_freed"]
    price = sum(r["cost"] for r in teams) / (held * 24)  # a 1d window
    assert (
        values["The plan frees"]
        == f"{freed} of {review['consolidation']['gpus_today']} GPUs, {freed * 24 * price:,.0f} EUR over the window"
    )
    assert all(c.endswith("(EUR)") for c in (md["By team"].header or [])[-2:]) and md["By team"].header


def test_the_traffic_share_table_puts_models_over_provisioned_for_their_traffic_first(
    small_review: dict[str, Any],
) -> None:
    md = _same_in_both(_dated(small_review))
    table = md["Traffic share against GPU share"]
    assert [r[0] for r in table.rows] == ["big", "small"]  # 70 % of the GPUs for 20 % of the tokens
    assert table.rows[0][1:] == ["1,000,000", "20%", "70%", "3.5×"]


def test_slo_worst_first_and_trends_largest_change_first(small_review: dict[str, Any]) -> None:
    review = {
        **small_review,
        "trends": [
            {"dimension": "team", "name": "a", "gpus_used": 1.0, "gpus_used_previous": 1.1, "change": -0.1},
            {"dimension": "team", "name": "b", "gpus_used": 1.0, "gpus_used_previous": 4.0, "change": -3.0},
        ],
    }
    md = md_sections(markdown(review))
    assert md["SLO attainment"].items[0].startswith("m&m: 75.0%")
    assert md["Week over week"].items[0].startswith("team b: 4.0 → 1.0")


def test_charts_are_in_the_html_only_with_their_numbers(small_review: dict[str, Any]) -> None:
    review = _dated(small_review)
    page, text = html(review), markdown(review)
    assert page.count('<svg class="chart"') == 2 and "<svg" not in text
    first = page[page.index("<svg") : page.index("</svg>")]
    for r in review["by"]["team"]:  # each team's used and allocated GPUs written beside its bar
        assert f"{r['gpus_used_sm']:.1f} of {r['gpus_allocated']:.1f}" in first
    assert html(review) == page  # deterministic: same figures, same bytes


HOUR = 3600
START = 1796425200.0 - 24 * HOUR  # the day _dated's review covers


def _over_time(review: dict[str, Any]) -> dict[str, Any]:
    """``review`` with a timeline of hourly steps: each team at its table's figures all day, but the team
    without a name only from noon (a gap before, not zero)."""
    timeline = {}
    for r in review["by"]["team"]:
        late = not r["name"]
        figures = [r["gpus_allocated"], r["gpus_used_sm"]]
        timeline[r["name"]] = [[START + i * HOUR, *([None, None] if late and i < 12 else figures)] for i in range(24)]
    return {**review, "timeline": timeline, "timeline_step_s": HOUR}


def test_the_timeline_is_a_chart_in_the_html_and_a_line_per_team_in_both(small_review: dict[str, Any]) -> None:
    review = _over_time(_dated(small_review))
    md = _same_in_both(review)
    assert list(md)[:3] == ["Headline", "Allocated against used, by team", "Allocated against used over time"]
    section = md["Allocated against used over time"]
    assert section.text == ["Per team, the mean over each 1h step; a step without data is a gap, not zero."]
    # a line per team, in the table's order (largest idle cost first), the late team's gap said
    assert section.items == [
        f"{HOSTILE_TEAM}: peak 4.0 GPUs allocated, 1.5 GPUs' worth used on average",
        "(none): peak 1.0 GPUs allocated, 0.0 GPUs' worth used on average (over the 12 of 24 steps with data)",
        f"{PIPED_TEAM}: peak 2.0 GPUs allocated, 2.0 GPUs' worth used on average",
    ]
    page = html(review)
    assert page.count('<svg class="chart"') == 3 and "<svg" not in markdown(review)
    chart = page[page.index("<h2>Allocated against used over time</h2>") :]
    chart = chart[chart.index("<svg") : chart.index("</svg>")]
    assert "used per team over time" in chart
    assert all(h.escape(name or "(none)") in chart for name in review["timeline"])  # a panel per team
    assert 'id="timeline-' in chart and 'id="use-' not in chart  # its own ids: no clash with the other charts
    assert html(review) == page  # deterministic


def test_without_a_timeline_there_is_no_section_over_time(small_review: dict[str, Any]) -> None:
    for review in (small_review, {**_over_time(small_review), "timeline": {}}):
        assert "Allocated against used over time" not in md_sections(markdown(review))
        assert html(review).count('<svg class="chart"') == 2


@pytest.mark.skipif(binary() is None, reason="chromium is missing: `make system-deps` installs it")
def test_the_review_renders_in_chromium_with_its_charts_and_the_jsons_headline(
    small_review: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    over_time = _over_time(small_review)
    monkeypatch.setattr(cli, "run", lambda client, **kwargs: {**over_time, "window": kwargs["window"]})
    flags = ["--prometheus", "http://prometheus:9090", "--window", "1d", "--at", "1796425200", "--currency", "EUR"]
    assert main([*flags, "--out", str(tmp_path), "--format", "html,json"]) == 0
    capsys.readouterr()
    expected = json.loads((tmp_path / "review.json").read_text())["headline"]
    with chromium() as page:
        page.load(tmp_path / "report.html")
        assert page.errors == []
        charts = page.charts()
        figures = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('tr[data-figure]')].map("
            "e => [e.dataset.figure, e.children[1].textContent]))"
        )
    # the two bar charts and the timeline's small multiples, each drawn at a size one can read
    assert len(charts) == 3 and all(w > 100 and h > 50 and n > 10 for w, h, n in charts), charts
    assert charts[2][1] > charts[0][1] / 2, charts  # the timeline: a panel per team, not squashed
    assert figures["gpus_held"] == f"{expected['gpus_held']:.1f} GPUs on average"
    assert figures["gpus_used"].startswith(f"{expected['gpus_used']:.1f} GPUs")
    assert figures["cost"] == f"{expected['cost']:,.0f} EUR"
    assert figures["idle_cost"].startswith(f"{expected['idle_cost']:,.0f} EUR")
    assert figures["gpus_freed"].startswith(f"{expected['gpus_freed']} of {expected['gpus_today']} GPUs")
    assert expected["covers"] == "1d from 2026-12-03 23:00 UTC to 2026-12-04 23:00 UTC"


@pytest.mark.parametrize("name", ["--currency", "GPUATTR_CURRENCY"])
def test_the_reviews_currency_comes_from_the_flag_or_the_environment_and_defaults_to_usd(name: str) -> None:
    parser = cli.build_parser()
    base = ["--prometheus", "http://prometheus:9090"]
    assert parse_args(parser, base, environ={}).currency == "USD"
    assert "default: USD" in parser.format_help()
    argv, env = ([*base, name, "EUR"], {}) if name.startswith("--") else (base, {name: "EUR"})
    assert parse_args(parser, argv, environ=env).currency == "EUR"


@pytest.mark.parametrize(
    ("needed", "today", "said", "unsaid"),
    [
        (6, 8, "fit on 6 GPU(s) instead of 8. 2 freed", "still need"),
        (8, 8, "still need all 8 GPU(s): none to give back.", "instead of"),
        (9, 8, "need 9 GPU(s), more than the 8 they have.", "instead of"),
    ],
)
def test_the_consolidation_says_instead_of_only_when_the_plan_frees_gpus(
    small_review: dict[str, Any], needed: int, today: int, said: str, unsaid: str
) -> None:
    review = _dated(small_review)
    review["consolidation"] = {
        **review["consolidation"],
        "gpus_needed": needed,
        "gpus_today": today,
        "gpus_freed": max(0, today - needed),
    }
    review["headline"] = headline(review)
    text = " ".join(_same_in_both(review)["Consolidation"].text)
    assert said in text and unsaid not in text and ("freed" in text) == (needed < today), text
