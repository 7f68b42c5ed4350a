"""Hostile clients on real sockets: slow-loris senders, slow readers and a greedy client cost only themselves.

Linux routes all of 127.0.0.0/8 to the loopback, so each client binds its own source address: the hostile
ones come from 127.0.0.2, the polite ones and the probes from other addresses, as Prometheus and the kubelet
would from their own.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from exporter.render import Exposition
from exporter.server import MetricsServer

HOSTILE = "127.0.0.2"


def _exposition(size: int = 4096) -> Exposition:
    text = b"# a page\n" + b"x" * size + b"\n"
    return Exposition(text, text, text, text, time.time())


@pytest.fixture
def serve() -> Iterator[list[MetricsServer]]:
    started: list[MetricsServer] = []
    yield started
    for server in started:
        server.stop()


def _start(started: list[MetricsServer], expo: Exposition, **limits: float) -> MetricsServer:
    server = MetricsServer("127.0.0.1", 0, lambda: expo, max_age_s=1e12, **limits)  # type: ignore[arg-type]
    server.start()
    started.append(server)
    return server


def _timed_get(server: MetricsServer, path: str, source: str = "127.0.0.1", timeout: float = 1.0) -> tuple[int, float]:
    """(status, seconds) of one request on a new connection from ``source``; status 0 when it failed."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - t0
    except OSError:
        return 0, time.monotonic() - t0
    finally:
        conn.close()


def _connect(server: MetricsServer, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=(source, 0))


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except OSError:
        return True  # reset


def test_slow_loris_connections_hold_neither_the_probes_nor_the_scrapes_and_are_dropped(
    serve: list[MetricsServer],
) -> None:
    # Twelve connections sending their headers a byte at a time: more than --max-connections (8).
    server = _start(serve, _exposition(), request_timeout_s=2.0)
    loris = [_connect(server, HOSTILE) for _ in range(12)]
    for sock in loris:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.4):
            for sock in loris:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")

    dripper = threading.Thread(target=trickle, daemon=True)
    dripper.start()
    try:
        time.sleep(0.3)
        for path in ("/healthz", "/readyz", "/metrics"):
            status, took = _timed_get(server, path)
            assert (status, took < 1.0) == (200, True), (path, status, took)
        time.sleep(2.5)  # past the whole-head deadline, though each sent a byte every 0.4 s
        assert all(_closed_by_server(sock) for sock in loris)
        assert server.rejected["slow_client"] == 12
        assert _timed_get(server, "/metrics")[0] == 200
    finally:
        stop.set()
        dripper.join(2)
        for sock in loris:
            sock.close()


def test_fifty_slow_readers_leave_a_polite_scrape_served(serve: list[MetricsServer]) -> None:
    # A page larger than the socket buffers hold, requested by fifty connections that never read it.
    server = _start(serve, _exposition(16 * 2**20), request_timeout_s=2.0)
    readers = [_connect(server, HOSTILE) for _ in range(50)]
    try:
        for sock in readers:
            with contextlib.suppress(OSError):  # refused at once: more than one address may hold
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        assert _timed_get(server, "/healthz")[0] == 200
        status, took = _timed_get(server, "/metrics", source="127.0.0.3", timeout=5.0)
        assert status == 200 and took < 5.0
        assert server.rejected["client_connections"] >= 30  # one address holds at most 16 of them
        time.sleep(2.5)  # the two responses being written to slow readers miss their deadline
        assert server.rejected["slow_client"] >= 2
        assert _timed_get(server, "/metrics", source="127.0.0.3", timeout=5.0)[0] == 200
    finally:
        for sock in readers:
            sock.close()


def test_a_greedy_client_is_refused_while_polite_scrapers_and_probes_are_served(serve: list[MetricsServer]) -> None:
    server = _start(serve, _exposition())
    stop = threading.Event()
    greedy_served = [0]

    def greedy() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5, source_address=(HOSTILE, 0))
        while not stop.is_set():
            try:
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                resp.read()
                greedy_served[0] += resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5, source_address=(HOSTILE, 0))
        conn.close()

    scrapes: list[int] = []
    probes: list[tuple[int, float]] = []

    def polite(i: int) -> None:  # 2 scrapes a second, each with a 2 s time-out, from its own address
        source = f"127.0.1.{i + 1}"
        next_at = time.monotonic()
        for _ in range(10):
            scrapes.append(_timed_get(server, "/metrics", source=source, timeout=2.0)[0])
            next_at += 0.5
            time.sleep(max(0.0, next_at - time.monotonic()))

    def prober() -> None:
        while not stop.wait(0.5):
            probes.append(_timed_get(server, "/healthz", source="127.0.2.1"))

    hammers = [threading.Thread(target=greedy, daemon=True) for _ in range(16)]
    for t in hammers:
        t.start()
    time.sleep(1.0)  # the greedy client has spent its burst and the global budget is under pressure
    others = [threading.Thread(target=polite, args=(i,), daemon=True) for i in range(16)]
    probe = threading.Thread(target=prober, daemon=True)
    for t in [*others, probe]:
        t.start()
    for t in others:
        t.join(15)
    stop.set()
    for t in [*hammers, probe]:
        t.join(5)
    assert len(scrapes) == 160
    assert scrapes.count(200) >= 159, f"{scrapes.count(200)} of {len(scrapes)} polite scrapes served"
    assert probes and all(status == 200 and took < 1.0 for status, took in probes), probes
    assert server.rejected["client_rate"] > 0 and greedy_served[0] > 0
