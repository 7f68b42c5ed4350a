"""Generate the Python modules for every ``.proto`` under this package.

For each ``<name>.proto`` it writes ``<name>_pb2.py``, ``<name>_pb2.pyi`` and ``<name>_pb2_grpc.py`` next to
the ``.proto``, using ``python -m grpc_tools.protoc``. Protoc runs with the repository root as the include
path, so the generated gRPC module imports its messages absolutely
(``from exporter.resolve.proto.podresources.v1 import api_pb2``) and works wherever ``exporter`` imports.

Idempotent: files are rewritten only when their content changes (unchanged ones are just touched, so
:func:`ensure_generated` sees them as fresh). Run as ``python -m exporter.resolve.proto.generate``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
# The directory that holds the top-level ``exporter`` package: protoc's include root.
IMPORT_ROOT = PROTO_DIR.parents[2]
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Every ``.proto`` file under ``proto_dir``, sorted."""
    return sorted(proto_dir.rglob("*.proto"))


def outputs_for(proto: Path) -> list[Path]:
    """The generated files that belong to ``proto``."""
    stem = proto.name.removesuffix(".proto")
    return [proto.with_name(stem + suffix) for suffix in SUFFIXES]


def is_fresh(proto: Path) -> bool:
    """True when every generated file of ``proto`` exists and is not older than it."""
    proto_mtime_ns = proto.stat().st_mtime_ns
    return all(out.exists() and out.stat().st_mtime_ns >= proto_mtime_ns for out in outputs_for(proto))


def _write_if_changed(target: Path, content: bytes) -> bool:
    """Write ``content`` to ``target`` atomically; True when the content changed."""
    if target.exists() and target.read_bytes() == content:
        os.utime(target)
        return False
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(content)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return True


def generate(protos: list[Path] | None = None) -> list[Path]:
    """Run protoc over ``protos`` (default: all); return the generated files whose content changed.

    Raises RuntimeError naming the .proto when protoc fails or grpc_tools is missing.
    """
    changed: list[Path] = []
    for proto in protos if protos is not None else proto_files():
        rel = proto.resolve().relative_to(IMPORT_ROOT)
        with tempfile.TemporaryDirectory(prefix="gpuattr-protoc-") as out_dir:
            cmd = [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--proto_path={IMPORT_ROOT}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                str(rel),
            ]
            result = subprocess.run(cmd, cwd=IMPORT_ROOT, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(
                    f"protoc failed for {proto} (exit {result.returncode}): {(result.stderr or result.stdout).strip()}"
                )
            for target in outputs_for(proto):
                produced = Path(out_dir) / rel.parent / target.name
                if not produced.exists():
                    raise RuntimeError(f"protoc produced no {target.name} for {proto}")
                if _write_if_changed(target, produced.read_bytes()):
                    changed.append(target)
    return changed


def ensure_generated() -> list[Path]:
    """Generate the modules of every .proto whose outputs are missing or stale; return those changed."""
    stale = [proto for proto in proto_files() if not is_fresh(proto)]
    return generate(stale) if stale else []


def main() -> int:
    """Entry point: regenerate everything, report what changed on stderr."""
    try:
        changed = generate()
    except RuntimeError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 1
    for path in changed:
        print(f"generate: wrote {path.relative_to(IMPORT_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
