"""The HTTP endpoint: pre-rendered scrapes, content negotiation, health, TLS and client certificates."""

from __future__ import annotations

import gzip
import http.client
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common import catalog as c
from exporter.app import build
from exporter.render import Exposition
from exporter.sampler import Sampler, SamplerOptions
from exporter.server import MetricsServer
from exporter.settings import ExporterSettings
from exporter.snapshot import CommandNameResolver
from tests.conftest import SCENARIOS, Sim, one_gpu


@pytest.fixture
def sampler(simulate: Callable[..., Sim]) -> tuple[Sim, Sampler]:
    sim = simulate(one_gpu({"pid": 1, "memory": "1GiB", "sm": 0.5}), start=10)
    smp = Sampler(sim.reader, CommandNameResolver("/nonexistent", sim.reader.process_name), SamplerOptions())
    return sim, smp


def _serve(
    sampler: Sampler, *, tls_cert: str | None = None, tls_key: str | None = None, tls_client_ca: str | None = None
) -> MetricsServer:
    server = MetricsServer(
        "127.0.0.1",
        0,
        lambda: sampler.exposition,
        alive=lambda: True,
        max_age_s=1e12,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
    )
    server.start()
    return server


def _get(server: MetricsServer, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", path, headers=headers or {})
    return conn.getresponse()


def test_ready_only_after_the_first_sample_and_scrapes_make_no_nvml_call(sampler: tuple[Sim, Sampler]) -> None:
    sim, smp = sampler
    server = _serve(smp)
    try:
        assert _get(server, "/readyz").status == 503
        assert _get(server, "/metrics").status == 503
        assert _get(server, "/healthz").status == 200
        smp.sample_once()
        assert _get(server, "/readyz").status == 200
        before = dict(sim.fake.calls)
        bodies = {_get(server, "/metrics").read() for _ in range(20)}
        assert sim.fake.calls == before  # twenty scrapes, not one NVML call
        assert len(bodies) == 1 and b"gpuattr_container_gpu_memory_bytes" in bodies.pop()
        assert _get(server, "/nope").status == 404
    finally:
        server.stop()


def test_openmetrics_and_gzip_are_negotiated(sampler: tuple[Sim, Sampler]) -> None:
    _, smp = sampler
    smp.sample_once()
    server = _serve(smp)
    try:
        om = _get(server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.getheader("Content-Type") == Exposition.OPENMETRICS_TYPE
        assert om.read().endswith(b"# EOF\n")
        zipped = _get(server, "/metrics", {"Accept-Encoding": "gzip"})
        assert zipped.getheader("Content-Encoding") == "gzip"
        assert gzip.decompress(zipped.read()) == smp.exposition.text  # type: ignore[union-attr]
        plain = _get(server, "/metrics")
        assert plain.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    finally:
        server.stop()


def test_readiness_fails_when_the_sampler_has_stalled(sampler: tuple[Sim, Sampler]) -> None:
    _, smp = sampler
    smp.sample_once()  # the simulated clock sets the sample time far from now
    server = MetricsServer("127.0.0.1", 0, lambda: smp.exposition, max_age_s=60)
    server.start()
    try:
        response = _get(server, "/readyz")
        assert response.status == 503 and b"old" in response.read()
    finally:
        server.stop()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    for name, cn in (("server", "127.0.0.1"), ("client", "prometheus")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(d / f"{name}.crt"),
        )
    return d


def _https(server: MetricsServer, ctx: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=5)
    conn.request("GET", "/metrics")
    return conn.getresponse().status


def test_metrics_over_tls(sampler: tuple[Sim, Sampler], pki: Path) -> None:
    _, smp = sampler
    smp.sample_once()
    server = _serve(smp, tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"))
    try:
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        assert _https(server, ctx) == 200
        with pytest.raises(ssl.SSLError):
            _https(server, ssl.create_default_context())  # an unknown CA is refused by the client
    finally:
        server.stop()


def test_client_certificates_are_required_when_a_client_ca_is_set(sampler: tuple[Sim, Sampler], pki: Path) -> None:
    _, smp = sampler
    smp.sample_once()
    server = _serve(
        smp, tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"), tls_client_ca=str(pki / "ca.crt")
    )
    try:
        anonymous = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            _https(server, anonymous)
        with_cert = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        with_cert.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
        assert _https(server, with_cert) == 200
    finally:
        server.stop()


def test_responses_are_not_held_back_by_nagle(sampler: tuple[Sim, Sampler]) -> None:
    # Headers and body are separate writes: with Nagle on, a small body waits ~40 ms for a delayed ACK
    # (bench/nagle_check.py measures it). Every accepted socket must set TCP_NODELAY.
    _, smp = sampler
    server = _serve(smp)
    try:
        assert getattr(server.httpd.RequestHandlerClass, "disable_nagle_algorithm", False) is True
    finally:
        server.stop()


# --- many, slow and silent clients ----------------------------------------------------------------------


def _silent(server: MetricsServer, n: int) -> list[socket.socket]:
    """``n`` connections that say nothing: each holds a serving slot until the server's time-out."""
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(n)]
    time.sleep(0.2)  # let the server accept them
    return held


def test_connections_beyond_the_limit_get_503_with_retry_after_and_are_counted(sampler: tuple[Sim, Sampler]) -> None:
    _, smp = sampler
    smp.sample_once()
    server = MetricsServer("127.0.0.1", 0, lambda: smp.exposition, max_open=2, timeout_s=30)
    server.start()
    held = _silent(server, 2)
    try:
        busy = _get(server, "/metrics")
        assert busy.status == 503 and busy.getheader("Retry-After") == "1"
        assert server.rejected_total == 1 and server.rejected["connections"] == 1
        for conn in held:
            conn.close()
        deadline = time.monotonic() + 5
        while _get(server, "/healthz").status != 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # the slots come back once the silent clients have gone
        assert _get(server, "/metrics").status == 200
    finally:
        for conn in held:
            conn.close()
        server.stop()


def test_a_silent_client_is_dropped_after_the_timeout_and_frees_its_slot(sampler: tuple[Sim, Sampler]) -> None:
    _, smp = sampler
    smp.sample_once()
    server = MetricsServer("127.0.0.1", 0, lambda: smp.exposition, max_open=1, timeout_s=0.5)
    server.start()
    (held,) = _silent(server, 1)
    try:
        assert _get(server, "/metrics").status == 503  # the one slot is taken
        time.sleep(1.0)
        assert held.recv(1) == b""  # the server closed it
        assert _get(server, "/metrics").status == 200
    finally:
        held.close()
        server.stop()


def test_a_tls_client_that_never_says_hello_does_not_stop_others_from_being_served(
    sampler: tuple[Sim, Sampler], pki: Path
) -> None:
    # The handshake used to run in the accept loop: one silent TCP connection froze the whole endpoint.
    _, smp = sampler
    smp.sample_once()
    server = _serve(smp, tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"))
    held = _silent(server, 3)
    try:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        assert _https(server, ctx) == 200
    finally:
        for conn in held:
            conn.close()
        server.stop()


def test_a_client_that_hangs_up_mid_response_leaves_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    big = Exposition(b"x" * (8 * 2**20), b"", b"", b"", 0.0)  # more than the socket buffers hold
    server = MetricsServer("127.0.0.1", 0, lambda: big, max_age_s=1e12)
    server.start()
    try:
        for _ in range(3):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.recv(100)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # reset
        time.sleep(0.3)
        assert _get(server, "/healthz").status == 200
    finally:
        server.stop()
    assert "Traceback" not in capfd.readouterr().err


def test_requests_over_the_rate_are_paced_and_a_flood_is_refused_with_503(sampler: tuple[Sim, Sampler]) -> None:
    _, smp = sampler
    smp.sample_once()
    server = MetricsServer(
        "127.0.0.1", 0, lambda: smp.exposition, max_connections=64, max_rate=4, client_rate=1000, max_age_s=1e12
    )
    server.start()
    try:
        t0 = time.monotonic()
        statuses = [_get(server, "/readyz").status for _ in range(4)]  # probes: not paced by the scrape budget
        assert statuses == [200] * 4 and time.monotonic() - t0 < 0.5
        statuses = [_get(server, "/metrics").status for _ in range(8)]  # a burst of 4, then 4 more at 4/s
        assert statuses == [200] * 8
        assert time.monotonic() - t0 >= 0.9
        with ThreadPoolExecutor(16) as pool:  # sixteen at once: more than a second's wait for the last ones
            flood = list(pool.map(lambda _: _get(server, "/metrics").status, range(16)))
        assert flood.count(200) >= 4 and flood.count(503) >= 4
        assert set(flood) == {200, 503}
        assert server.rejected_total == flood.count(503) == server.rejected["rate"]
    finally:
        server.stop()


def test_the_exporter_serves_its_count_of_refused_requests(tmp_path: Path) -> None:
    exporter = build(
        ExporterSettings(
            simulate=str(SCENARIOS / "h100-inference-node.yaml"), listen="127.0.0.1:0", max_open_connections=1
        )
    )
    exporter.server.start()
    try:
        (held,) = _silent(exporter.server, 1)
        assert _get(exporter.server, "/metrics").status == 503
        held.close()
        deadline = time.monotonic() + 5
        while _get(exporter.server, "/healthz").status != 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the silent connection's slot is free again
        exporter.sampler.sample_once()  # the count as of now goes into the exposition
        body = _get(exporter.server, "/metrics").read().decode()
        name = c.EXPORTER_HTTP_REJECTED.name
        assert f'{name}{{reason="connections"}} {exporter.server.rejected["connections"]:.1f}' in body
        assert exporter.server.rejected["connections"] >= 1
        assert f'{name}{{reason="slow_client"}} 0.0' in body
    finally:
        exporter.stop()
