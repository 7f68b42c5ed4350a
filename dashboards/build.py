"""Render the Grafana dashboards to ``dashboards/generated/*.json``; CI fails when they are stale.

    python -m dashboards.build           # write dashboards/generated/
    python -m dashboards.build --check   # exit 1 when a committed file differs from what would be generated

Each dashboard module has ``UID`` and ``build()`` returning the SDK's dashboard builder; the JSON is the
SDK's own serialisation with sorted keys and stable panel ids, so the output is deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from dashboards import cluster, node, vllm, workload

OUT_DIR = Path(__file__).resolve().parent / "generated"

DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    f"{cluster.UID}.json": cluster.build,
    f"{node.UID}.json": node.build,
    f"{workload.UID}.json": workload.build,
    f"{vllm.UID}.json": vllm.build,
}
"""File name -> builder of every generated dashboard."""


def _number_panels(board: model.Dashboard) -> None:
    """Give every panel (rows and the panels inside collapsed rows too) a stable id, in layout order."""
    next_id = 1
    for panel in board.panels or []:
        panel.id_val = next_id
        next_id += 1
        if isinstance(panel, model.RowPanel):
            for inner in panel.panels:
                inner.id_val = next_id
                next_id += 1


def render(builder: dash.Dashboard) -> str:
    board = builder.build()
    _number_panels(board)
    return json.dumps(board, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    """Write every dashboard into ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    """Names of the dashboards whose file in ``out_dir`` is missing or differs from what would be generated."""
    return [
        name
        for name, text in render_all().items()
        if not (out_dir / name).exists() or (out_dir / name).read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the JSON files go")
    parser.add_argument("--check", action="store_true", help="fail if the files differ from what would be generated")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(args.out_dir)
        if outdated:
            print(f"stale in {args.out_dir}: {', '.join(outdated)}; run `python -m dashboards.build`", file=sys.stderr)
            return 1
        return 0
    for path in write(args.out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
