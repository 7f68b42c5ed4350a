"""The HTTP(S) endpoint: ``/metrics`` serves the last rendered exposition; ``/healthz``, ``/readyz``."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from exporter.render import Exposition

log = logging.getLogger("gpuattr.server")


class MetricsServer:
    """Serves bytes the sampler rendered; a scrape makes no NVML call and renders nothing."""

    def __init__(
        self,
        host: str,
        port: int,
        exposition: Callable[[], Exposition | None],
        *,
        alive: Callable[[], bool] = lambda: True,
        max_age_s: float = 60.0,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
    ) -> None:
        self._exposition = exposition
        self._alive = alive
        self.max_age_s = max_age_s
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.tls = tls_cert is not None
        if tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tls_cert, tls_key)
            if tls_client_ca:
                ctx.load_verify_locations(cafile=tls_client_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.httpd.server_address[0])
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"{'https' if self.tls else 'http'}://{shown}:{self.port}/metrics"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="gpuattr-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()  # waits for serve_forever to return: only when it runs
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def _ready(self) -> tuple[bool, str]:
        expo = self._exposition()
        if expo is None:
            return False, "no sample yet"
        age = time.time() - expo.timestamp
        if age > self.max_age_s:
            return False, f"last sample is {age:.0f}s old"
        return True, "ok"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "gpuattr"
            # Headers and body go out in two writes; with Nagle on, a small body waits for the client's
            # delayed ACK of the headers (~40 ms). Measured in bench/nagle_check.py.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

            def _send(self, status: int, body: bytes, ctype: str, encoding: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if encoding:
                    self.send_header("Content-Encoding", encoding)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    expo = server._exposition()
                    if expo is None:
                        self._send(503, b"no sample yet\n", "text/plain; charset=utf-8")
                        return
                    accept = self.headers.get("Accept", "")
                    gz = "gzip" in self.headers.get("Accept-Encoding", "")
                    if "application/openmetrics-text" in accept:
                        body, ctype = (
                            (expo.openmetrics_gz if gz else expo.openmetrics),
                            Exposition.OPENMETRICS_TYPE,
                        )
                    else:
                        body, ctype = (expo.text_gz if gz else expo.text), Exposition.TEXT_TYPE
                    self._send(200, body, ctype, "gzip" if gz else None)
                elif path == "/healthz":
                    ok = server._alive()
                    self._send(
                        200 if ok else 503,
                        b"ok\n" if ok else b"sampler stopped\n",
                        "text/plain; charset=utf-8",
                    )
                elif path == "/readyz":
                    ready, why = server._ready()
                    self._send(200 if ready else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
                elif path == "/":
                    page = b'<html><body><h1>gpuattr exporter</h1><a href="/metrics">/metrics</a></body></html>\n'
                    self._send(200, page, "text/html; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

        return Handler
