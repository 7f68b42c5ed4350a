"""Writing a set of report files all or nothing: a reader never sees half a report, nor a mix of two runs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path


class OutputError(Exception):
    """A report could not be written; the files of the last good run are left as they were."""


def write_all(folder: Path, writers: Mapping[str, Callable[[Path], None]], what: str) -> list[Path]:
    """Each ``writers[name](path)`` writes a temporary file beside ``folder / name``; only when every one has
    succeeded are they renamed into place, so a full disk or a file in the way loses nothing of the last run.

    ``what`` names the folder in the error (the flag that gave it, ``--out reports/``).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what}: cannot create the folder: {exc.strerror or exc}") from None
    staged: list[tuple[Path, Path]] = []
    try:
        for name, writer in writers.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            os.chmod(tmp, 0o644)  # a report is for reading (mkstemp makes it private)
            staged.append((Path(tmp), folder / name))
            try:
                writer(Path(tmp))
            except OSError as exc:
                raise OutputError(
                    f"{what}: cannot write {name}: {exc.strerror or exc}; the last run's files are unchanged"
                ) from None
        for _, final in staged:
            if final.is_dir():
                raise OutputError(f"{what}: cannot write {final.name}: a folder of that name is in the way")
        for tmp_path, final in staged:
            try:
                os.replace(tmp_path, final)
            except OSError as exc:
                raise OutputError(f"{what}: cannot write {final.name}: {exc.strerror or exc}") from None
    except OSError as exc:  # mkstemp itself: the folder is full or not writable
        raise OutputError(f"{what}: cannot write there: {exc.strerror or exc}") from None
    finally:
        for tmp_path, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
    return [final for _, final in staged]


def text_writer(text: str) -> Callable[[Path], None]:
    """A writer for ``write_all`` that writes ``text`` as UTF-8."""

    def write(path: Path) -> None:
        path.write_text(text, encoding="utf-8")

    return write
