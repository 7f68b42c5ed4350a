"""Report files are written all or nothing: a failed write leaves the last run's files as they were."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pytest

from common.files import OutputError, text_writer, write_all


def _full_disk(path: Path) -> None:
    path.write_text("half a ", encoding="utf-8")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_every_file_lands_readable_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    written = write_all(tmp_path, {"a.csv": text_writer("1\n"), "report.html": text_writer("<p>")}, "--out x")
    assert written == [tmp_path / "a.csv", tmp_path / "report.html"]
    assert (tmp_path / "a.csv").read_text(encoding="utf-8") == "1\n"
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "report.html"]


def test_a_full_disk_midway_leaves_every_file_of_the_last_run_unchanged(tmp_path: Path) -> None:
    write_all(tmp_path, {"a.csv": text_writer("old a"), "b.csv": text_writer("old b")}, "--out x")
    with pytest.raises(OutputError) as caught:
        write_all(tmp_path, {"a.csv": text_writer("new a"), "b.csv": _full_disk}, f"--out {tmp_path}")
    assert str(caught.value) == (
        f"--out {tmp_path}: cannot write b.csv: No space left on device; the last run's files are unchanged"
    )
    assert (tmp_path / "a.csv").read_text(encoding="utf-8") == "old a"  # not a mix of two runs
    assert (tmp_path / "b.csv").read_text(encoding="utf-8") == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]


def test_a_folder_in_the_way_is_named_and_nothing_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("old a", encoding="utf-8")
    (tmp_path / "report.html").mkdir()
    with pytest.raises(OutputError, match=r"cannot write report\.html: a folder of that name is in the way"):
        write_all(tmp_path, {"a.csv": text_writer("new a"), "report.html": text_writer("<p>")}, "--out x")
    assert (tmp_path / "a.csv").read_text(encoding="utf-8") == "old a"


def test_a_folder_that_cannot_be_made_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("", encoding="utf-8")
    with pytest.raises(OutputError, match=r"^--out x: cannot create the folder: "):
        write_all(tmp_path / "file" / "reports", {"a.csv": text_writer("")}, "--out x")
