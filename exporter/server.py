"""The HTTP(S) endpoint: ``/metrics`` serves the last rendered exposition; ``/healthz``, ``/readyz``.

A scrape only copies bytes, but parsing each request is Python work: thousands of requests a second, or
dozens of busy connection threads, starve the sampler thread of the interpreter lock and samples slip
(measured in bench/scrape_load.py). A few hostile clients must cost only themselves, so the limits are:

- open connections: at most ``max_open`` in all and ``max_open_per_client`` from one address; beyond that a
  connection gets ``503`` and ``Retry-After`` at once. A connection waiting for its request takes no
  serving slot, so silent or slow-loris connections cannot make the scrapes or the probes wait.
- a request's head (request line and headers) must arrive within ``request_timeout_s`` of its first byte,
  and its response be taken within ``request_timeout_s``, in all, not per byte: a slow-loris sender or a
  slow reader is dropped. A connection idle between requests is closed after ``timeout_s``.
- scrapes (anything but the probes) are paced per client address (``client_rate`` a second, in bursts of
  as many; a client over it waits up to a second, then gets ``503``), then globally (``max_rate``, as
  before), and at most ``max_connections`` responses are written at once, at most a quarter of them to one
  address. So one greedy client is refused while the others are served.
- ``/healthz`` and ``/readyz`` are cheap and never count against the scrape budget: a probe is served while
  the scrapes are refused. They are paced per address by their own bucket (``client_rate`` a second).

Every refusal and every dropped slow client is counted, by reason. A TLS handshake happens on the
connection's own thread, so a client that connects and says nothing holds one connection for a while,
never the server.
"""

from __future__ import annotations

import io
import logging
import socket
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

#: Why a request was refused or a connection dropped: the ``reason`` label of the rejected counter.
REASONS = ("connections", "client_connections", "busy", "client_busy", "rate", "client_rate", "slow_client")

PROBES = frozenset({"/healthz", "/readyz"})


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


class _ClientPacer:
    """One token bucket per (client address, kind): ``rate`` a second, bursts of as many.

    A caller over its own budget waits up to ``max_wait_s`` (asleep, on its own connection's thread); one
    that would wait longer sleeps ``max_wait_s`` and is refused, so a client hammering the endpoint gets
    at most one answer a second per connection it holds, and nobody else waits for it. Full buckets are
    forgotten once there are many, so the table stays small.
    """

    _KEEP = 4096

    def __init__(self, rate: float, max_wait_s: float = 1.0) -> None:
        self.rate = rate
        self.max_wait_s = max_wait_s
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def admit(self, client: str, kind: str) -> bool:
        with self._lock:
            now = time.monotonic()
            tokens, at = self._buckets.get((client, kind), (self.rate, now))
            tokens = min(self.rate, tokens + (now - at) * self.rate)
            wait = (1.0 - tokens) / self.rate if tokens < 1.0 else 0.0
            if wait <= self.max_wait_s:
                tokens -= 1.0
            if len(self._buckets) >= self._KEEP:
                self._forget_full(now)
            self._buckets[(client, kind)] = (tokens, now)
        time.sleep(min(wait, self.max_wait_s))
        return wait <= self.max_wait_s

    def _forget_full(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.rate >= self.rate]
        for key in full:
            del self._buckets[key]


class _Counts:
    """Per-address counts of something held (open connections, responses being written), under a cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> bool:
        with self._lock:
            n = self._held.get(client, 0)
            if n >= self.cap:
                return False
            self._held[client] = n + 1
            return True

    def give(self, client: str) -> None:
        with self._lock:
            n = self._held.get(client, 0) - 1
            if n > 0:
                self._held[client] = n
            else:
                self._held.pop(client, None)


class _HeadReader(io.RawIOBase):
    """The connection's read side with a whole-head deadline.

    The first byte of a request may take up to ``idle_s`` (a keep-alive connection between requests);
    from that byte on, the rest of the head must arrive within ``head_s`` in all, however the client spaces
    its bytes. ``expired`` says the deadline, not the idle wait, ended the connection.
    """

    def __init__(self, sock: socket.socket, idle_s: float, head_s: float) -> None:
        super().__init__()
        self._sock = sock
        self._idle_s = idle_s
        self._head_s = head_s
        self._deadline: float | None = None
        self.expired = False

    def next_request(self) -> None:
        self._deadline = None

    def head_done(self) -> None:
        self._deadline = float("inf")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._deadline is None:
            self._sock.settimeout(self._idle_s)
        elif self._deadline != float("inf"):
            left = self._deadline - time.monotonic()
            if left <= 0:
                self.expired = True
                raise TimeoutError("request head not received in time")
            self._sock.settimeout(left)
        try:
            n = self._sock.recv_into(buffer)
        except TimeoutError:
            self.expired = self._deadline is not None and self._deadline != float("inf")
            raise
        if n and self._deadline is None:
            self._deadline = time.monotonic() + self._head_s
        return n


class _BoundedServer(ThreadingHTTPServer):
    """A threading server that keeps at most ``max_open`` connections (``per_client`` from one address)."""

    daemon_threads = True
    request_queue_size = 256  # the default 5 drops handshakes when scrapers arrive together

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_open: int, per_client: int
    ) -> None:
        super().__init__(address, handler)
        self._open = threading.BoundedSemaphore(max_open)
        self._open_by_client = _Counts(per_client)
        self.rejected: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._count_lock = threading.Lock()
        self.tls_context: ssl.SSLContext | None = None

    def count(self, reason: str) -> None:
        with self._count_lock:
            self.rejected[reason] += 1

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        if not self._open_by_client.take(client):
            self._refuse(request, "client_connections")
            return
        if not self._open.acquire(blocking=False):
            self._open_by_client.give(client)
            self._refuse(request, "connections")
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._open.release()
            self._open_by_client.give(client)
            raise

    def _refuse(self, request: Any, reason: str) -> None:
        self.count(reason)
        if self.tls_context is None:  # a TLS client gets no plain-text answer: the connection just closes
            try:
                request.settimeout(0.5)
                request.sendall(_BUSY)
            except OSError:
                pass
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._open.release()
            self._open_by_client.give(str(client_address[0]))

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
        max_open: int = 64,
        max_open_per_client: int = 16,
        client_rate: float = 10.0,
        request_timeout_s: float = 5.0,
    ) -> None:
        self._exposition = exposition
        self._alive = alive
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.request_timeout_s = request_timeout_s
        self._pacer = _Pacer(max_rate)
        self._client_pacer = _ClientPacer(client_rate)
        self._writing = threading.BoundedSemaphore(max_connections)
        self._writing_by_client = _Counts(max(1, max_connections // 4))
        handler = self._handler_class()
        ctx = _tls_context(tls_cert, tls_key, tls_client_ca) if tls_cert else None  # before binding: no socket leaks
        try:
            self.httpd = _BoundedServer((host, port), handler, max_open, max_open_per_client)
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
        """Connections and requests refused (503) or dropped as too slow, all reasons together."""
        return sum(self.httpd.rejected.values())

    @property
    def rejected(self) -> dict[str, int]:
        """The refusals by reason (:data:`REASONS`), as of now."""
        return dict(self.httpd.rejected)

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
                self._head = _HeadReader(self.connection, server.timeout_s, server.request_timeout_s)
                self.rfile.close()  # the plain reader super() made: requests are read through the deadline
                self.rfile = io.BufferedReader(self._head)
                self._write_expired = False

            def handle_one_request(self) -> None:
                self._head.next_request()
                super().handle_one_request()
                if self._head.expired or self._write_expired:
                    self._head.expired = self._write_expired = False
                    server.httpd.count("slow_client")

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

            def _send(self, status: int, body: bytes, ctype: str, encoding: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if encoding:
                    self.send_header("Content-Encoding", encoding)
                # The whole response must be taken within the request time-out (sendall's time-out is
                # its total since Python 3.5): a client that reads slowly is dropped, not waited for.
                deadline = time.monotonic() + server.request_timeout_s
                self.connection.settimeout(server.request_timeout_s)
                try:
                    self.end_headers()
                    if self.command != "HEAD":
                        self.connection.settimeout(max(0.001, deadline - time.monotonic()))
                        self.wfile.write(body)
                except TimeoutError:
                    self._write_expired = True
                    raise

            def _refuse(self, reason: str) -> None:
                server.httpd.count(reason)
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                self._head.head_done()
                self.connection.settimeout(server.request_timeout_s)  # for a refusal; _send sets its own
                path = self.path.split("?", 1)[0]
                client = str(self.client_address[0])
                if path in PROBES:
                    if not server._client_pacer.admit(client, "probe"):
                        self._refuse("client_rate")
                    else:
                        self._answer(path)
                    return
                if not server._client_pacer.admit(client, "scrape"):
                    self._refuse("client_rate")
                    return
                if not server._pacer.admit():
                    self._refuse("rate")
                    return
                if not server._writing_by_client.take(client):
                    self._refuse("client_busy")
                    return
                try:
                    if not server._writing.acquire(timeout=1.0):
                        self._refuse("busy")
                        return
                    try:
                        self._answer(path)
                    finally:
                        server._writing.release()
                finally:
                    server._writing_by_client.give(client)

            def _answer(self, path: str) -> None:
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
