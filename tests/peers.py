"""Real peers started by tests on loopback: Prometheus and Alertmanager from Debian's packages."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

LOG_TAIL_CHARS = 4000
"""How much of a peer's log a failure message quotes (characters, from the end)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; waits for the process either way."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


@contextmanager
def _serve(name: str, argv: list[str], url: str, log: Path, ready_timeout_s: float = 30.0) -> Iterator[None]:
    """Run ``argv`` until ``url/-/ready`` answers (bounded), yield, then always stop it."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} did not start: " + _tail(log, 2000))
            time.sleep(0.2)
        yield
    finally:
        stop_process(proc)


class Prometheus:
    def __init__(self, url: str, log: Path | None = None) -> None:
        self.url = url
        self.log = log

    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        body = _get_json(f"{self.url}/api/v1/query?{q}")
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait_for(self, expr: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll until the query returns something (bounded)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (``/api/v1/alerts``)."""
        body = _get_json(f"{self.url}/api/v1/alerts")
        assert body["status"] == "success", body
        return list(body["data"]["alerts"])

    def log_tail(self) -> str:
        return _tail(self.log) if self.log is not None else "(no log)"


def backfill(history: Path, data: Path, *, max_block_hours: int | None = None) -> Path:
    """``history`` (OpenMetrics with timestamps) into TSDB blocks under ``data`` with Debian's promtool, for
    ``prometheus(..., storage=data)``. ``max_block_hours`` writes fewer, larger blocks for a long history."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package, which provides it")
    extra = [f"--max-block-duration={max_block_hours}h"] if max_block_hours else []
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", *extra, str(history), str(data)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return data


@contextmanager
def prometheus(
    tmp_path: Path,
    targets: list[str],
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str | None = None,
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
    storage: Path | None = None,
    extra_scrape_configs: Sequence[dict[str, Any]] = (),
    ready_timeout_s: float = 30.0,
    retention: str = "30d",
) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port scraping ``targets`` (job ``gpuattr``); optionally evaluating
    ``rule_files`` and sending alerts to ``alertmanagers`` (``host:port``); ``storage`` may hold backfilled
    blocks. Stopped on exit, also on failure."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: `make test` installs Debian's prometheus package")
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "scrape_configs": [
            {"job_name": "gpuattr", "static_configs": [{"targets": targets}]},
            *extra_scrape_configs,
        ],
    }
    if rule_files:
        config["rule_files"] = [str(path) for path in rule_files]
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "prometheus.log"
    argv = [
        binary,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={storage or tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.retention.time={retention}",
    ]
    with _serve("prometheus", argv, url, log, ready_timeout_s):
        yield Prometheus(url, log)


class Alertmanager:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    @property
    def target(self) -> str:
        """``host:port``, as Prometheus' ``alerting`` section wants it."""
        return self.url.removeprefix("http://")

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts it holds (``/api/v2/alerts``)."""
        return list(_get_json(f"{self.url}/api/v2/alerts"))

    def log_tail(self) -> str:
        return _tail(self.log)


def alertmanager_binary() -> str:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager is missing: `make test` installs Debian's prometheus-alertmanager package")
    return binary


@contextmanager
def alertmanager(tmp_path: Path, config: dict[str, Any]) -> Iterator[Alertmanager]:
    """Alertmanager on a free loopback port with ``config``, clustering off. Stopped on exit, also on failure."""
    binary = alertmanager_binary()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "alertmanager.log"
    argv = [
        binary,
        f"--config.file={tmp_path / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip: one instance, nothing listens beyond the web port
        "--log.level=debug",
    ]
    with _serve("alertmanager", argv, url, log):
        yield Alertmanager(url, log)
