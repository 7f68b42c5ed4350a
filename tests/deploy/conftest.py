"""Rendering of the kustomizations under ``deploy/`` for the manifest tests.

A real kustomize renders when one can be found: ``$DEPLOY_KUSTOMIZE`` (a kustomize binary),
``$DEPLOY_KUBECTL`` (a kubectl), the pinned kubectl that ``deploy/validate.sh`` installs into
``<venv>/deploy-tools``, or a ``kustomize`` / kustomize-v5 ``kubectl`` on PATH.

Without one, only the base can be loaded, by a deliberately limited loader: it reads the files that
``deploy/base/kustomization.yaml`` lists and applies its ``namespace`` and ``images``; it refuses any other
kustomization field (a patch, a generator), so it can never hide what a patch would change. Overlays need
a real kustomize and are skipped without one (run ``bash deploy/validate.sh`` once to install it).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = sorted(path.parent for path in (DEPLOY / "overlays").glob("*/kustomization.yaml"))

FALLBACK_FIELDS = frozenset({"apiVersion", "kind", "namespace", "labels", "resources", "images"})
"""The kustomization fields the fallback loader understands; ``labels`` is ignored (no test reads it)."""

CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})

Manifest = dict[str, Any]


def _kubectl_has_kustomize_v5(kubectl: str) -> bool:
    try:
        out = subprocess.run(
            [kubectl, "version", "--client"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Kustomize Version: v5" in out


@functools.cache
def renderer() -> tuple[str, ...] | None:
    """The command that renders a kustomization directory (appended), or None when there is none."""
    if os.environ.get("DEPLOY_KUSTOMIZE"):
        return (os.environ["DEPLOY_KUSTOMIZE"], "build")
    if os.environ.get("DEPLOY_KUBECTL"):
        return (os.environ["DEPLOY_KUBECTL"], "kustomize")
    for venv in (Path(sys.prefix), REPO / ".venv"):
        pinned = sorted((venv / "deploy-tools").glob("kubectl-*/kubectl"))
        if pinned and os.access(pinned[-1], os.X_OK):
            return (str(pinned[-1]), "kustomize")
    kustomize = shutil.which("kustomize")
    if kustomize:
        return (kustomize, "build")
    kubectl = shutil.which("kubectl")
    if kubectl and _kubectl_has_kustomize_v5(kubectl):
        return (kubectl, "kustomize")
    return None


def _load_all(text: str, where: str) -> list[Manifest]:
    docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc:
            raise AssertionError(f"{where}: a document is not a Kubernetes object: {doc!r}")
    return docs


def _load_base_without_kustomize() -> list[Manifest]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kustomization) - FALLBACK_FIELDS
    if unknown:
        pytest.fail(
            f"deploy/base/kustomization.yaml uses {sorted(unknown)}, which the fallback loader cannot apply; "
            "install a kustomize (bash deploy/validate.sh) to run these tests"
        )
    images = {image["name"]: image for image in kustomization.get("images", [])}
    objects: list[Manifest] = []
    for resource in kustomization["resources"]:
        path = BASE / resource
        objects += _load_all(path.read_text(encoding="utf-8"), str(path))
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED and "namespace" in kustomization:
            obj["metadata"]["namespace"] = kustomization["namespace"]
        template = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in template.get("containers", []):
            image = images.get(container["image"])
            if image is not None:
                name = image.get("newName", image["name"])
                container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name
    return objects


@functools.cache
def _render_text(directory: Path) -> str:
    command = renderer()
    assert command is not None
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"rendering {directory} failed: {result.stderr}")
    return result.stdout


def render(directory: Path) -> list[Manifest]:
    """The objects a kustomization renders to (fresh copies: tests may change them)."""
    if renderer() is None:
        if directory != BASE:
            pytest.skip(f"no kustomize to render {directory.relative_to(REPO)}: run bash deploy/validate.sh")
        return _load_base_without_kustomize()
    return _load_all(_render_text(directory), str(directory))


@pytest.fixture
def base() -> list[Manifest]:
    return render(BASE)


def only(objects: list[Manifest], kind: str) -> Manifest:
    """The one object of ``kind``; fails when there is none or more than one."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
