"""One bounded HTTP request, used by every outgoing call of the project.

``timeout_s`` is the deadline for the whole exchange (connect, TLS handshake, send, status line, headers,
body), not for each socket read: every socket operation gets only the time left, so a peer that trickles
a byte a second is cut off at the deadline like one that never answers. Name resolution is the one step
the deadline does not bound (the system resolver has no time-out to give). The body is capped at
``max_bytes``. Every error is a :class:`FetchError` whose message names the URL (never its password) and
whose ``reason`` is a short label for error counters. Proxies (``HTTP_PROXY``...) are not used.
"""

from __future__ import annotations

import base64
import http.client
import io
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["DEFAULT_MAX_BYTES", "FetchError", "Response", "fetch", "push_handler", "redact"]

DEFAULT_MAX_BYTES = 64 * 2**20
_CHUNK = 65536
_ERROR_BODY_BYTES = 65536  # what is kept of a refused answer's body


class FetchError(Exception):
    """A request that gave no usable answer. ``reason``: timeout, unreachable, http, too_large, bad_url
    (and not_metrics, from :func:`common.exposition.scrape`).

    ``status`` and ``body`` (the first 64 KiB) are set for ``http``; ``status`` also for ``too_large``.
    """

    def __init__(self, url: str, reason: str, detail: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(f"{url}: {detail}")
        self.url, self.reason, self.detail, self.status, self.body = url, reason, detail, status, body


def looks_like_html(body: bytes | str, content_type: str = "") -> bool:
    """A web page (a login form, a proxy's error, a UI) where metrics or JSON were expected."""
    if "html" in content_type.lower():
        return True
    head = (body[:512].decode("utf-8", errors="replace") if isinstance(body, bytes) else body[:512]).lstrip().lower()
    return head.startswith(("<!doctype html", "<html", "<head", "<body", "<?xml"))


HTML_ANSWER = "not {what}: an HTML page (a login page, a proxy, or the wrong path?)"


@dataclass(frozen=True)
class Response:
    url: str  # as errors show it: without a password
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes = field(repr=False)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class _DeadlineSocket:
    """What ``http.client`` asks of a socket (``sendall``, ``makefile``, ``close``), each operation given
    only the time left before the deadline. ``close`` leaves the socket open: ``http.client`` closes the
    connection once the head says so, while the body is still to be read; :func:`fetch` closes it after."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self._deadline = sock, deadline

    def arm(self) -> None:
        self.sock.settimeout(_left(self._deadline))

    def sendall(self, data: bytes) -> None:
        self.arm()
        self.sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        pass


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self._sock.arm()
        return self._sock.sock.recv_into(buffer)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


# scheme://user:password@ -- the user ends at the first ":", the password at the last "@" before the path
_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#:]*):[^/?#]*@")


def redact(url: str) -> str:
    """The URL as errors show it: never with a password (even in a URL too broken to parse)."""
    return _PASSWORD.sub(r"\1:***@", url, count=1)


def _target(url: str, shown: str) -> tuple[str, int, str, dict[str, str]]:
    """host, port, request target and authorization header of an http(s) URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(shown, "bad_url", f"not a valid URL: {exc}") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise FetchError(shown, "bad_url", "not an http(s) URL")
    auth: dict[str, str] = {}
    if parts.username is not None:
        user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
        auth["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.isascii() or any(ch <= " " or ch == "\x7f" for ch in target):
        raise FetchError(shown, "bad_url", "not a valid URL: a space, control or non-ASCII character in it")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80), target, auth


def _read(response: http.client.HTTPResponse, limit: int, *, truncate: bool = False) -> bytes | None:
    """The body, or None when it is longer than ``limit`` (``truncate``: its first ``limit`` bytes)."""
    want = limit if truncate else limit + 1
    chunks: list[bytes] = []
    size = 0
    while size < want:
        chunk = response.read1(min(_CHUNK, want - size))
        if not chunk:
            if response.length:  # the peer closed before the Content-Length it announced
                raise http.client.IncompleteRead(b"".join(chunks), response.length)
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(chunks)


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

    A status ``ok`` refuses raises FetchError with ``reason="http"``, the status and the start of the body.
    ``user:password@`` in the URL becomes basic authentication. ``context`` is for https (default: the
    system's trusted certificates, host name checked).
    """
    shown = redact(url)
    host, port, target, auth = _target(url, shown)
    deadline = time.monotonic() + timeout_s
    tls = (context or ssl.create_default_context()) if url.lower().startswith("https:") else None
    conn = http.client.HTTPSConnection(host, port, context=tls) if tls else http.client.HTTPConnection(host, port)
    all_headers = {"Connection": "close", **auth, **(headers or {})}
    sock: socket.socket | None = None
    try:
        sock = socket.create_connection((host, port), timeout=_left(deadline))
        if tls is not None:
            sock.settimeout(_left(deadline))
            sock = tls.wrap_socket(sock, server_hostname=host)
        conn.sock = _DeadlineSocket(sock, deadline)
        conn.request(method, target, body=data, headers=all_headers)
        response = conn.getresponse()
        status, reason = response.status, response.reason
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        if not ok(status):
            body = _read(response, min(max_bytes, _ERROR_BODY_BYTES), truncate=True) or b""
        else:
            whole = None if (response.length or 0) > max_bytes else _read(response, max_bytes)
            if whole is None:
                raise FetchError(shown, "too_large", f"answer larger than {max_bytes:,} bytes", status)
            body = whole
    except FetchError:
        raise
    except TimeoutError as exc:
        raise FetchError(shown, "timeout", f"timed out after {timeout_s:g} s") from exc
    except ssl.SSLError as exc:
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        raise FetchError(shown, "unreachable", f"TLS: {detail}") from exc
    except (http.client.InvalidURL, UnicodeError) as exc:  # e.g. a host name IDNA cannot encode
        raise FetchError(shown, "bad_url", f"not a valid URL: {exc}") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        detail = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        raise FetchError(shown, "unreachable", detail) from exc
    finally:
        conn.close()
        if sock is not None:
            sock.close()
    if not ok(status):
        detail = f"HTTP {status} {reason}".rstrip()
        if "html" not in answer_headers.get("content-type", ""):  # an error page is noise in a message
            excerpt = " ".join(body[:200].decode("utf-8", errors="replace").split())
            detail += f": {excerpt}" if excerpt else ""
        raise FetchError(shown, "http", detail, status, body)
    return Response(shown, status, answer_headers, body)


def push_handler(timeout_s: float) -> Callable[..., Callable[[], None]]:
    """A ``handler`` for prometheus-client's ``push_to_gateway`` that goes through :func:`fetch`."""

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        def push() -> None:
            fetch(url, method=method, data=data, headers=dict(headers), timeout_s=timeout_s, max_bytes=1 << 20)

        return push

    return handler
