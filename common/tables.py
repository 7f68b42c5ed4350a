"""Plain-text tables for the terminal: columns padded to their widest cell, a rule under the header."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()) -> str:
    """``header`` and ``rows`` as aligned text; columns whose index is in ``right`` are right-aligned."""
    body = [list(map(str, header)), *(list(map(str, r)) for r in rows)]
    for n, row in enumerate(body[1:], 1):
        if len(row) != len(body[0]):
            raise ValueError(f"table row {n} has {len(row)} cells, the header {len(body[0])}: {row!r}")
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]
    align = set(right)

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if i in align else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    out = [line(body[0]), "  ".join("-" * w for w in widths).rstrip(), *(line(r) for r in body[1:])]
    return "\n".join(out)
