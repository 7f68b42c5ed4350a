"""Fixtures for the pod-resources tests: generated stubs, a short socket path, a simulated kubelet."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.resolve.proto import generate


@pytest.fixture(scope="session", autouse=True)
def _generated_stubs() -> None:
    """Generate the pod-resources stubs when missing or stale, so a clean checkout tests too."""
    generate.ensure_generated()


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A socket path under /tmp: AF_UNIX paths hold at most 107 bytes, pytest's tmp_path can be longer."""
    directory = tempfile.mkdtemp(prefix="podres-", dir="/tmp")
    try:
        yield str(Path(directory) / "kubelet.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
