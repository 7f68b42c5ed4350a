"""common.tables: columns padded to their widest cell, chosen columns right-aligned, a rule under the header."""

from __future__ import annotations

import pytest

from common.tables import table


def test_columns_are_as_wide_as_their_widest_cell_and_right_columns_align_right() -> None:
    out = table(["name", "GiB"], [["a", "1.00"], ["long-name", "12.50"]], right=[1])
    assert out.splitlines() == [
        "name         GiB",
        "---------  -----",
        "a           1.00",
        "long-name  12.50",
    ]


def test_columns_align_left_unless_named_and_no_line_ends_in_spaces() -> None:
    out = table(["pod", "team", "gpus"], [["p", "search", "8"], ["pod-long", "ml", "16"]])
    lines = out.splitlines()
    assert lines == [
        "pod       team    gpus",
        "--------  ------  ----",
        "p         search  8",
        "pod-long  ml      16",
    ]
    assert all(line == line.rstrip() for line in lines)
    # every column starts at the same offset on every line
    starts = {line.index(cell) for line, cell in zip(lines[2:], ["search", "ml"], strict=True)}
    assert starts == {lines[0].index("team")}


def test_right_aligned_cells_end_where_their_column_ends() -> None:
    out = table(["gpu", "used", "total"], [["0", "7", "80"], ["1", "70.5", "80"]], right=[1, 2])
    lines = out.splitlines()
    ends = {len(line.rstrip()) for line in lines}
    assert ends == {len(lines[1])}  # the last column is right-aligned: every line ends with the rule
    assert [line.index("7") + 1 for line in lines[2:3]] == [lines[0].index("used") + len("used")]


def test_cells_that_are_not_strings_are_written_with_str() -> None:
    out = table(["n", "x"], [[1, 2.5]], right=[0])  # type: ignore[list-item]
    assert out.splitlines()[-1] == "1  2.5"


def test_a_header_alone_gives_the_header_and_its_rule() -> None:
    assert table(["a", "bb"], []) == "a  bb\n-  --"


@pytest.mark.parametrize("row", [["only-one"], ["a", "b", "c"]])
def test_a_row_with_another_number_of_cells_than_the_header_is_refused(row: list[str]) -> None:
    with pytest.raises(ValueError, match=f"table row 2 has {len(row)} cells, the header 2"):
        table(["a", "b"], [["x", "y"], row])
