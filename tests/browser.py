"""A real headless browser for the HTML reports: Debian's Chromium driven over the DevTools protocol.

:func:`chromium` starts it on a loopback DevTools port with a fresh profile and no network features, and
yields a :class:`Page`: load a file, collect what the console and the page reported as errors, evaluate
JavaScript, take a full-page PNG. Used by the report tests and by ``bench/screenshots.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import websocket

FLAGS = (
    "--headless",
    "--no-sandbox",  # as root (the test machines) Chromium refuses to start without it
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.next_id = 0
        self.errors: list[str] = []  # console errors, uncaught exceptions, failed loads: one line each
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        self.events.append(message)
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append("exception: " + str(details.get("exception", {}).get("description") or details))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())

    def wait_for(self, method: str, timeout_s: float = 30.0, since: int | None = None) -> dict[str, Any]:
        """The next ``method`` event; with ``since``, also one already received (while waiting for a reply)
        at or after that index of ``events``: a small page can fire its load event before navigate returns."""
        if since is not None:
            for message in self.events[since:]:
                if message.get("method") == method:
                    params_seen: dict[str, Any] = message.get("params", {})
                    return params_seen
        deadline = time.monotonic() + timeout_s
        self.ws.settimeout(timeout_s)
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self._event(message)
            if message.get("method") == method:
                params: dict[str, Any] = message.get("params", {})
                return params
        raise TimeoutError(f"no {method} within {timeout_s} s")

    def load(self, path: Path, width: int = 1280) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        mark = len(self.events)
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired", since=mark)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def charts(self) -> list[tuple[float, float, int]]:
        """Each ``svg.chart`` of the page as drawn: its width and height in pixels and how many marks it has."""
        found = self.evaluate(
            "[...document.querySelectorAll('svg.chart')].map(s => {const r = s.getBoundingClientRect();"
            " return [r.width, r.height, s.querySelectorAll('path, text, use').length]})"
        )
        return [(float(w), float(h), int(n)) for w, h, n in found]

    def screenshot(self, path: Path, width: int = 1280) -> None:
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.contextmanager
def chromium(timeout_s: float = 30.0) -> Iterator[Page]:
    """A headless Chromium with a fresh profile, on a loopback DevTools port; stopped on exit."""
    exe = binary()
    if exe is None:
        raise FileNotFoundError("chromium is missing: `make system-deps` installs Debian's chromium")
    with tempfile.TemporaryDirectory(prefix="gpuattr-chromium-") as profile:
        proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout_s
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not open its DevTools port (exit {proc.poll()})")
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout_s) as response:
                targets = json.load(response)
            target = next(t for t in targets if t.get("type") == "page")
            ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout_s, suppress_origin=True)
            try:
                page = Page(ws)
                for domain in ("Page", "Runtime", "Log"):
                    page.call(f"{domain}.enable")
                yield page
            finally:
                ws.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
