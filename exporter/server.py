"""The HTTP(S) endpoint: ``/metrics`` serves the last rendered exposition; ``/healthz``, ``/readyz``.

A scrape only copies bytes, but parsing each request is Python work: thousands of requests a second, or
dozens of connection threads, starve the sampler thread of the interpreter lock and samples slip (measured
in bench/scrape_load.py). So at most ``max_connections`` are served at once (beyond that a connection gets
``503`` and ``Retry-After`` at once) and requests are paced to ``max_rate`` a second: a request over the
rate waits, asleep and off the lock, for up to a second, then gets ``503``. Both refusals are counted.
A connection idle or slow for ``timeout_s`` is closed, and a TLS handshake happens on the connection's own
thread, so a client that connects and says nothing holds one slot for a while, never the server.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common.quoting import InputError
from exporter.render import Exposition

log = logging.getLogger("gpuattr.server")

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\n"
    b"Content-Length: 27\r\nConnection: close\r\n\r\ntoo many concurrent scrapes\n"
)


class _Pacer:
    """A token bucket: ``rate`` requests a second, bursts of up to ``rate``; callers over it sleep."""

    def __init__(self, rate: float, max_wait_s: float = 1.0) -> None:
        self.rate = rate
        self.max_wait_s = max_wait_s
        self._tokens = rate
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def admit(self) -> bool:
        """True once the caller may go on (maybe after a sleep); False when it would wait too long."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
            self._at = now
            wait = (1.0 - self._tokens) / self.rate if self._tokens < 1.0 else 0.0
            if wait > self.max_wait_s:
                return False
            self._tokens -= 1.0  # may go below zero: the wait pays it back
        if wait > 0:
            time.sleep(wait)
        return True


class _BoundedServer(ThreadingHTTPServer):
    """A threading server that serves at most ``slots`` connections at once and answers the rest 503."""

    daemon_threads = True
    request_queue_size = 256  # the default 5 drops handshakes when scrapers arrive together

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], slots: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(slots)
        self.rejected_total = 0
        self.tls_context: ssl.SSLContext | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.rejected_total += 1
            if self.tls_context is None:  # a TLS client gets no plain-text answer: the connection just closes
                try:
                    request.settimeout(0.5)
                    request.sendall(_BUSY)
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a client that went away, timed out or failed its TLS handshake
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.warning("error serving %s", client_address, exc_info=True)


def _tls_context(cert: str, key: str | None, client_ca: str | None) -> ssl.SSLContext:
    """The server's TLS context; a missing or unreadable PEM file is one sentence naming it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"--tls-cert {cert!r} / --tls-key {key!r}: {_pem_reason(exc)}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"--tls-client-ca {client_ca!r}: {_pem_reason(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _pem_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return "not a PEM certificate with its matching private key"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read it: {exc.strerror}"
    return f"cannot load it: {exc}"


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
        max_connections: int = 8,
        max_rate: float = 100.0,
        timeout_s: float = 10.0,
    ) -> None:
        self._exposition = exposition
        self._alive = alive
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self._pacer = _Pacer(max_rate)
        handler = self._handler_class()
        ctx = _tls_context(tls_cert, tls_key, tls_client_ca) if tls_cert else None  # before binding: no socket leaks
        try:
            self.httpd = _BoundedServer((host, port), handler, max_connections)
        except OSError as exc:  # the port in use, an address not on this machine, a privileged port
            raise InputError(
                f"--listen {host}:{port}: cannot listen there: {exc.strerror or exc} "
                "(another process on the port, or an address this machine does not have)"
            ) from None
        self.tls = tls_cert is not None
        if ctx is not None:
            # the handshake runs on the connection's thread (in setup), not in the accept loop
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
            self.httpd.tls_context = ctx
        self._thread: threading.Thread | None = None

    @property
    def rejected_total(self) -> int:
        """Requests answered 503: beyond ``max_connections`` at once, or over ``max_rate`` for too long."""
        return self.httpd.rejected_total

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
            timeout = server.timeout_s  # idle keep-alive and slow clients are closed after this

            def setup(self) -> None:
                super().setup()
                if isinstance(self.connection, ssl.SSLSocket):
                    self.connection.do_handshake()

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
                if not server._pacer.admit():
                    server.httpd.rejected_total += 1
                    self.send_response(503)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
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
