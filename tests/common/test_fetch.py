"""``common.fetch.fetch`` against real servers on loopback: the deadline holds for the whole answer."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.fetch import FetchError, fetch, redact
from tests.common.slow_peer import SlowPeer


@pytest.fixture
def peer() -> Iterator[SlowPeer]:
    with SlowPeer() as p:
        yield p


def _fails(url: str, reason: str, **kwargs: object) -> tuple[FetchError, float]:
    t0 = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(url, **kwargs)  # type: ignore[arg-type]
    elapsed = time.monotonic() - t0
    assert info.value.reason == reason, str(info.value)
    assert str(info.value).startswith(f"{redact(url)}: ")  # the URL in every message
    return info.value, elapsed


def test_a_page_is_read_whole_with_its_status_and_headers(peer: SlowPeer) -> None:
    peer.body = b"x" * 300_000  # several reads
    answer = fetch(f"{peer.url}/metrics", timeout_s=5)
    assert (answer.status, answer.body, answer.headers["content-type"]) == (200, peer.body, "text/plain")
    peer.send_length = False  # the body ends when the connection closes
    assert fetch(f"{peer.url}/metrics", timeout_s=5).body == peer.body


@pytest.mark.parametrize("mode", ["trickle-body", "trickle-head", "silent"])
def test_a_peer_that_trickles_or_never_answers_is_cut_at_the_deadline(peer: SlowPeer, mode: str) -> None:
    peer.mode = mode
    error, elapsed = _fails(f"{peer.url}/metrics", "timeout", timeout_s=1.0)
    assert elapsed < 1.0 + 0.5, f"{mode}: {elapsed:.2f} s for a 1 s deadline"
    assert elapsed > 0.9  # and not given up early
    assert error.detail == "timed out after 1 s"


def test_a_body_over_the_cap_is_too_large_with_or_without_a_length(peer: SlowPeer) -> None:
    peer.body = b"y" * 5000
    assert fetch(peer.url, timeout_s=5, max_bytes=5000).body == peer.body  # exactly the cap is fine
    for send_length in (True, False):
        peer.send_length = send_length
        error, _ = _fails(peer.url, "too_large", timeout_s=5, max_bytes=4999)
        assert "larger than 4,999 bytes" in str(error)


def test_a_server_error_is_http_with_its_status_and_body(peer: SlowPeer) -> None:
    peer.mode, peer.status, peer.body = "status", 500, b"boom: the database is down"
    error, _ = _fails(f"{peer.url}/x?q=1", "http", timeout_s=5)
    assert error.status == 500 and error.body == peer.body
    assert str(error) == f"{peer.url}/x?q=1: HTTP 500 Internal Server Error: boom: the database is down"


def test_a_body_cut_short_of_its_length_is_not_taken_as_the_answer(peer: SlowPeer) -> None:
    peer.mode = "short"
    error, _ = _fails(peer.url, "unreachable", timeout_s=5)
    assert "IncompleteRead" in str(error)


def test_a_refused_port_is_unreachable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: bound, then closed
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
    error, elapsed = _fails(url, "unreachable", timeout_s=5)
    assert error.detail == "Connection refused" and elapsed < 2


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("file:///etc/passwd", "not an http(s) URL"),
        ("http://127.0.0.1:99999/", "not a valid URL"),
        ("http://127.0.0.1:1/a path", "not a valid URL"),
        ("http://[::1/metrics", "not a valid URL"),
    ],
)
def test_a_bad_url_is_named(url: str, detail: str) -> None:
    error, _ = _fails(url, "bad_url", timeout_s=1)
    assert detail in error.detail


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h:1/x", "http://u:***@h:1/x"),
        ("https://u%40x:p@ss@h/x?y=z@w", "https://u%40x:***@h/x?y=z@w"),  # the last @ before the path ends it
        ("http://u@h/x", "http://u@h/x"),  # no password, nothing to hide
        ("http://h/x?user=a:b@c", "http://h/x?user=a:b@c"),  # not the authority
        ("http://u:p@[::1/x", "http://u:***@[::1/x"),  # even where urlsplit gives up
    ],
)
def test_redact_hides_the_password_and_nothing_else(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_basic_auth_from_the_url_reaches_the_server_and_the_password_no_message(peer: SlowPeer) -> None:
    peer.mode = "echo-auth"
    host = peer.url.removeprefix("http://")
    answer = fetch(f"http://gpu%40ops:s3cr%3At@{host}/metrics", timeout_s=5)
    assert answer.body == b"Basic " + base64.b64encode(b"gpu@ops:s3cr:t")
    assert "s3cr" not in answer.url and answer.url == f"http://gpu%40ops:***@{host}/metrics"
    peer.mode = "silent"
    error, _ = _fails(f"http://gpu:hunter2@{host}/metrics", "timeout", timeout_s=0.3)
    assert "hunter2" not in str(error) and f"http://gpu:***@{host}/metrics: " in str(error)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    request = "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    subprocess.run(
        ["openssl", *request.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_https_with_a_self_signed_certificate_and_a_context_that_trusts_it(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    with SlowPeer(tls=server_ctx) as peer:
        answer = fetch(f"{peer.url}/metrics", timeout_s=5, context=ssl.create_default_context(cafile=str(cert)))
        assert (answer.status, answer.body) == (200, b"hello\n")
        error, _ = _fails(f"{peer.url}/metrics", "unreachable", timeout_s=5)  # the system's CAs do not know it
        assert error.detail.startswith("TLS: ") and "self-signed" in error.detail
        peer.mode = "trickle-body"  # the deadline holds over TLS too
        trusted = ssl.create_default_context(cafile=str(cert))
        _, elapsed = _fails(f"{peer.url}/metrics", "timeout", timeout_s=1.0, context=trusted)
        assert elapsed < 1.5
