"""A Pushgateway stand-in on loopback that keeps groups as the real one does: PUT replaces a group, POST
replaces only the families it carries within the group. Tests read what a dashboard would then see."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.metrics_core import Metric as Family
from prometheus_client.parser import text_string_to_metric_families

FIGURES_ATTRIBUTE = "/metrics/job/gpuattr-attribution"
HEALTH_ATTRIBUTE = "/metrics/job/gpuattr-attribution-health"
FIGURES_REVIEW = "/metrics/job/gpuattr-review"
HEALTH_REVIEW = "/metrics/job/gpuattr-review-health"


class FakePushgateway:
    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Family]] = {}
        self.requests: list[tuple[str, str, bytes]] = []  # method, path, body
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _push(self, replace_group: bool) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
                with gateway._lock:
                    gateway.requests.append((self.command, self.path, body))
                    group = {} if replace_group else dict(gateway.groups.get(self.path, {}))
                    gateway.groups[self.path] = {**group, **fams}
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_PUT(self) -> None:
                self._push(replace_group=True)

            def do_POST(self) -> None:
                self._push(replace_group=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def value(self, path: str, family: str, **labels: str) -> float | None:
        """The value of the one sample of ``family`` in group ``path`` with ``labels``; None when absent."""
        with self._lock:
            fam = self.groups.get(path, {}).get(family)
        found = [s.value for s in (fam.samples if fam else []) if labels.items() <= s.labels.items()]
        assert len(found) <= 1, (path, family, labels, found)
        return found[0] if found else None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
