"""The layering of the packages, read from their source with ``ast``.

``common/`` is the shared core: it imports the standard library, third-party packages and itself, nothing
else of the project. The node agent (``exporter/``) ships without the simulator, so it may only load it
lazily inside a function (``--simulate``), never at import time. The attribution job, alerts and dashboards
use neither the simulator nor the agent: what they share with it lives in ``common/``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROJECT = {"common", "exporter", "attribution", "simulator", "alerts", "dashboards", "gpuattr", "bench", "deploy"}
PROJECT_TESTS = {"tests"}


def _sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return files


def _imported(node: ast.AST, path: Path) -> Iterator[str]:
    """Dotted names ``node`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``); relative ones resolved."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = path.relative_to(ROOT).parent.parts
            base = ".".join(package[: len(package) - node.level + 1] + ((node.module,) if node.module else ()))
        else:
            base = node.module or ""
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names)
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
        in {"import_module", "__import__"}
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        yield node.args[0].value


def imports_anywhere(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {name for node in ast.walk(tree) for name in _imported(node, path)}


def imports_at_import_time(path: Path) -> set[str]:
    """What runs when the module is imported: its body, ``if``/``try``/``with`` and class bodies; not functions."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        found.update(_imported(node, path))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def _third_party() -> set[str]:
    return {name for name, dists in importlib.metadata.packages_distributions().items() if dists} - PROJECT


def test_the_helpers_see_imports_at_every_depth_and_tell_import_time_from_call_time(tmp_path: Path) -> None:
    probe = ROOT / "common" / "probe.py"  # where the relative import is resolved from; never written
    tree = ast.parse("from . import units\nfrom .quoting import short_repr\n")
    assert {name for node in ast.walk(tree) for name in _imported(node, probe)} == {
        "common",
        "common.units",
        "common.quoting",
        "common.quoting.short_repr",
    }
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nif True:\n    from simulator import node\n"
        "def f():\n    import exporter.app\n    importlib.import_module('simulator.demo')\n"
        "class C:\n    from attribution import job\n"
    )
    anywhere, early = imports_anywhere(module), imports_at_import_time(module)
    assert {"os", "simulator.node", "exporter.app", "simulator.demo", "attribution.job"} <= anywhere
    assert {"os", "simulator", "simulator.node", "attribution.job"} <= early
    assert not early & {"exporter.app", "simulator.demo"}  # inside a function: loaded when called


@pytest.mark.parametrize("path", _sources("common"), ids=lambda p: p.name)
def test_common_imports_only_the_standard_library_third_party_packages_and_itself(path: Path) -> None:
    third_party = _third_party()
    for name in sorted(imports_anywhere(path)):
        top = name.split(".")[0]
        if top == "common":
            continue
        assert top not in PROJECT | PROJECT_TESTS, f"common/{path.name} imports {name}: common/ must stand alone"
        assert top in sys.stdlib_module_names or top in third_party, f"common/{path.name} imports unknown {name}"


@pytest.mark.parametrize("path", _sources("exporter"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_exporter_never_loads_the_simulator_when_imported(path: Path) -> None:
    early = sorted(n for n in imports_at_import_time(path) if n.split(".")[0] == "simulator")
    assert early == [], f"{path.relative_to(ROOT)} imports {early} at import time; the agent image has no simulator"


@pytest.mark.parametrize(
    "path",
    [p for package in ("attribution", "alerts", "dashboards") for p in _sources(package)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_job_alerts_and_dashboards_use_neither_the_simulator_nor_the_agent(path: Path) -> None:
    # what they share with the agent (catalog, fetch, the Kubernetes client set-up, addresses) is in common/
    bad = sorted(n for n in imports_anywhere(path) if n.split(".")[0] in ("simulator", "exporter"))
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
