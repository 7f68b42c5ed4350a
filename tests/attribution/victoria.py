"""VictoriaMetrics from Debian's package, started by tests on loopback and loaded with a backfilled history
through its import API; for the job's and the review's figures against a second Prometheus-compatible store."""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.peers import _serve, free_port

BINARY = "victoria-metrics"
CHUNK_LINES = 200_000


def binary() -> str:
    """The binary's path; outside CI a missing binary skips the test (CI installs it: make system-deps)."""
    found = shutil.which(BINARY)
    if found is None:
        reason = f"{BINARY} is missing: `make system-deps` installs Debian's victoria-metrics package"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status in (200, 204), resp.status


def load_openmetrics(url: str, history: Path) -> None:
    """Import an OpenMetrics file (timestamps in seconds, as promtool backfills it) through
    /api/v1/import/prometheus, which reads the Prometheus text format (timestamps in milliseconds)."""
    chunk: list[str] = []

    def flush() -> None:
        if chunk:
            _post(f"{url}/api/v1/import/prometheus", "".join(chunk).encode())
            chunk.clear()

    with history.open() as lines:
        for line in lines:
            if not line or line.startswith("#"):
                continue
            series, _, stamp = line.rstrip("\n").rpartition(" ")
            chunk.append(f"{series} {round(float(stamp) * 1000)}\n")
            if len(chunk) >= CHUNK_LINES:
                flush()
    flush()
    with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=60):
        pass  # what was imported is searchable now, not after the next flush


@contextmanager
def victoria_metrics(tmp: Path) -> Iterator[str]:
    """VictoriaMetrics on a free loopback port with its own storage under ``tmp``: its base URL. Old
    timestamps are kept (retention of 100 years) and queries see up to now (no latency offset)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary(),
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-storageDataPath={tmp / 'victoria-data'}",
        "-retentionPeriod=100y",
        "-search.latencyOffset=0s",
        "-search.disableCache",
    ]
    with _serve("victoria-metrics", argv, url, tmp / "victoria.log"):
        yield url
