"""One bounded HTTP request, used by every outgoing call of the project.

``timeout_s`` is the deadline for the whole exchange (connect, send, status line, headers, body), not
for each socket read: a peer that trickles a byte a second is cut off at the deadline like one that
never answers. The body is capped at ``max_bytes``. Every error is a :class:`FetchError` whose message
names the URL and whose ``reason`` is a short label for error counters.
"""

from __future__ import annotations

import base64
import http.client
import io
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["FetchError", "Response", "fetch", "push_handler"]

DEFAULT_MAX_BYTES = 64 * 2**20


class FetchError(Exception):
    """A request that gave no usable answer. ``reason``: timeout, unreachable, http, too_large, bad_url."""

    def __init__(self, url: str, reason: str, detail: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(f"{url}: {detail}")
        self.url, self.reason, self.detail, self.status, self.body = url, reason, detail, status, body


@dataclass(frozen=True)
class Response:
    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class _DeadlineReader(io.RawIOBase):
    """A socket read end that refuses to wait past a deadline, however the peer paces its bytes."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _SocketShim:
    """What ``http.client.HTTPResponse`` asks of a socket: ``makefile("rb")``, here deadline-bound."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


def _connection(url: str, timeout_s: float, context: ssl.SSLContext | None) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise FetchError(url, "bad_url", "not an http(s) URL")
    try:
        port = parts.port
    except ValueError as exc:
        raise FetchError(url, "bad_url", f"bad port: {exc}") from None
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, port, timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return conn, target


def _auth_header(url: str) -> dict[str, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return {}
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _shown(url: str) -> str:
    """The URL as errors show it: never with a password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def fetch(
    url: str,
    *,
    timeout_s: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    method: str = "GET",
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    ok: Callable[[int], bool] = lambda status: 200 <= status < 300,
) -> Response:
    """``method url`` answered in full within ``timeout_s`` seconds and ``max_bytes`` bytes.

    A status ``ok`` refuses raises FetchError with ``reason="http"``, the status and the first KiB of
    the body (for the message). ``user:password@`` in the URL becomes basic authentication.
    """
    shown = _shown(url)
    deadline = time.monotonic() + timeout_s
    conn, target = _connection(url, timeout_s, context)
    all_headers = {"Connection": "close", **_auth_header(url), **(headers or {})}
    try:
        conn.connect()
        if conn.sock is None:  # pragma: no cover - connect() either sets it or raises
            raise OSError("no socket")
        sock = conn.sock
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        conn.request(method, target, body=data, headers=all_headers)
        response = http.client.HTTPResponse(_SocketShim(sock, deadline), method=method)  # type: ignore[arg-type]
        response.begin()
        status = response.status
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = response.read1(min(65536, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise FetchError(shown, "too_large", f"answer larger than {max_bytes:,} bytes", status)
        body = b"".join(chunks)
        answer = Response(shown, status, {k.lower(): v for k, v in response.getheaders()}, body)
    except FetchError:
        raise
    except TimeoutError as exc:
        raise FetchError(shown, "timeout", f"no complete answer within {timeout_s:g} s") from exc
    except ssl.SSLError as exc:
        raise FetchError(shown, "unreachable", f"TLS: {exc.reason or exc}") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        raise FetchError(shown, "unreachable", detail) from exc
    finally:
        conn.close()
    if not ok(answer.status):
        excerpt = answer.body[:1024].decode("utf-8", errors="replace").strip()
        detail = f"HTTP {answer.status}" + (f": {excerpt}" if excerpt else "")
        raise FetchError(shown, "http", detail, answer.status, answer.body)
    return answer


def push_handler(timeout_s: float) -> Callable[..., Callable[[], None]]:
    """A ``handler`` for prometheus-client's ``push_to_gateway`` that goes through :func:`fetch`."""

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        def push() -> None:
            fetch(url, method=method, data=data, headers=dict(headers), timeout_s=timeout_s, max_bytes=1 << 20)

        return push

    return handler
