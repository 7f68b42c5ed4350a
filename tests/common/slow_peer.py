"""An HTTP(S) server on 127.0.0.1 that answers well, badly or not at all, for tests of bounded requests.

``peer.mode`` says how every request is answered from then on:

- ``page``: 200 with ``peer.body`` (Content-Length set unless ``peer.send_length`` is False);
- ``trickle-body``: the head at once (Content-Length 1000), then one byte of body every ``TRICKLE_S``;
- ``trickle-head``: the status line, then the headers one byte every ``TRICKLE_S``;
- ``silent``: reads the request and never answers;
- ``status``: ``peer.status`` with ``peer.body``;
- ``short``: announces 100 bytes, sends 10 and closes;
- ``echo-auth``: 200 with the request's Authorization header as the body.

A handler still trickling or waiting stops when the peer is closed.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

TRICKLE_S = 0.3
MAX_WAIT_S = 30.0  # a handler never outlives a test by more than this, even if close() is not called


class SlowPeer:
    def __init__(self, mode: str = "page", *, tls: ssl.SSLContext | None = None) -> None:
        self.mode, self.body, self.status, self.send_length = mode, b"hello\n", 200, True
        self.requests = 0
        self._release = threading.Event()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                peer.requests += 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    getattr(self, "_" + peer.mode.replace("-", "_"))()
                self.close_connection = True

            def _trickle(self, data: bytes) -> None:
                for byte in data:
                    if peer._release.wait(TRICKLE_S):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()

            def _head(self, status: int, length: int | None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.send_header("Connection", "close")
                self.end_headers()

            def _page(self) -> None:
                self._head(200, len(peer.body) if peer.send_length else None)
                self.wfile.write(peer.body)

            def _status(self) -> None:
                self._head(peer.status, len(peer.body))
                self.wfile.write(peer.body)

            def _trickle_body(self) -> None:
                self._head(200, 1000)
                self._trickle(b"#" * 1000)

            def _trickle_head(self) -> None:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self._trickle(b"X-Slow: " + b"a" * 1000 + b"\r\nContent-Length: 0\r\n\r\n")

            def _silent(self) -> None:
                peer._release.wait(MAX_WAIT_S)

            def _short(self) -> None:
                self._head(200, 100)
                self.wfile.write(b"0123456789")

            def _echo_auth(self) -> None:
                body = self.headers.get("Authorization", "").encode()
                self._head(200, len(body))
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> SlowPeer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
