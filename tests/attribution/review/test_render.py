"""The review's Markdown and HTML: the same sections, tables and lists in both (they are laid out from one
structure), names quoted for each format, and every file format written."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from attribution.review import html, markdown, write
from attribution.review.render import DIMENSION_HEADER
from tests.attribution.review.conftest import HOSTILE_TEAM, PIPED_TEAM, Review


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
        assert md[title].header == list(DIMENSION_HEADER)
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
