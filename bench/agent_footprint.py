"""The node agent's installed footprint, built as the Dockerfile's agent stage builds it, at any revision.

No Docker engine is needed: the sources the Dockerfile's ``builder`` stage copies are read from that
revision's own Dockerfile, taken out of git into an empty folder, and installed into a fresh virtualenv with
``pip install ".[kubernetes,otlp]"`` under the exact pins of ``constraints.txt``; then, as in the image, the
kubernetes asyncio client is deleted and pip and setuptools are uninstalled. It prints the virtualenv's size,
the largest installed packages, and whether pydantic or the simulator made it in.

    .venv/bin/python bench/agent_footprint.py [--rev HEAD] [--rev ca57bdd ...]

Writes bench/out/agent-footprint.json.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "agent-footprint.json"
MiB = 2**20


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True).stdout


def builder_sources(dockerfile: str) -> list[str]:
    """What the agent's builder stage copies from the build context."""
    builder = dockerfile[dockerfile.index(" AS builder") : dockerfile.index(" AS attribution-builder")]
    out: list[str] = []
    for line in re.findall(r"(?m)^COPY (?!--from)(.*)$", builder):
        out += [word.rstrip("/") for word in line.split()[:-1]]
    return out


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure(rev: str, extras: str, work: Path) -> dict[str, object]:
    dockerfile = _git("show", f"{rev}:Dockerfile").decode()
    sources = builder_sources(dockerfile)
    src = work / "src"
    src.mkdir()
    with tarfile.open(fileobj=io.BytesIO(_git("archive", rev, *sources)), mode="r:") as tar:
        tar.extractall(src, filter="data")
    (work / "constraints.txt").write_bytes(_git("show", f"{rev}:constraints.txt"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(work / "constraints.txt"), f".[{extras}]" if extras else "."], cwd=src, check=True)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    shutil.rmtree(site / "kubernetes" / "aio", ignore_errors=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "uninstall", "--quiet", "--yes", "pip", "setuptools"], check=True
    )
    packages = {p.name: _size(p) for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")}
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    top = sorted(packages.items(), key=lambda kv: -kv[1])[:8]
    return {
        "rev": _git("rev-parse", "--short", rev).decode().strip(),
        "sources": sources,
        "venv_mib": round(_size(venv) / MiB, 1),
        "pydantic_installed": "pydantic" in installed,
        "extras": extras or "-",
        "project_mib": round(sum(_size(site / p) for p in ("common", "exporter", "gpuattr", "simulator")) / MiB, 2),
        "simulator_installed": (site / "simulator").exists() or (site / "exporter" / "sim").exists(),
        "largest_mib": {name: round(size / MiB, 1) for name, size in top},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", action="append", default=None, help="git revision (repeatable; default HEAD)")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    results = []
    for rev in args.rev or ["HEAD"]:
        for extras in ("", "kubernetes,otlp"):  # the bare agent (real NVML only), and what the image installs
            with tempfile.TemporaryDirectory() as tmp:
                results.append(measure(rev, extras, Path(tmp)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(
        "| revision | extras | virtualenv | project's own files | pydantic | simulator code | largest packages (MiB) |"
    )
    print("| --- | --- | ---: | ---: | --- | --- | --- |")
    for r in results:
        largest = ", ".join(f"{k} {v}" for k, v in r["largest_mib"].items())  # type: ignore[attr-defined]
        print(
            f"| {r['rev']} | {r['extras']} | {r['venv_mib']} MiB | {r['project_mib']} MiB | "
            f"{'yes' if r['pydantic_installed'] else 'no'} | {'yes' if r['simulator_installed'] else 'no'} | "
            f"{largest} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
