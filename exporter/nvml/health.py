"""Bookkeeping of NVML call outcomes: counts by call and code, permanent "not supported", log once."""

from __future__ import annotations

import logging
import threading

import pynvml

log = logging.getLogger("gpuattr.nvml")

# Codes that mean "this GPU or driver will never answer this call": stop asking.
_PERMANENT = {pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}
TIMED_OUT = "ExporterTimeout"
"""The code counted when a call did not return within ``--nvml-timeout`` (NVML's own is ``Timeout``)."""


def error_code_name(exc: pynvml.NVMLError) -> str:
    """``NotSupported``, ``GpuIsLost``… as the binding names its NVMLError subclasses."""
    name = type(exc).__name__
    if name.startswith("NVMLError_"):
        return name.removeprefix("NVMLError_")
    return f"Code{getattr(exc, 'value', 'Unknown')}"


class CallHealth:
    """Counts failures by (call, code) and remembers calls a GPU does not support.

    ``scope`` is a GPU UUID (or ``"node"``); a state change of one (call, scope) pair is logged once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors: dict[tuple[str, str], int] = {}
        self._unsupported: set[tuple[str, str]] = set()
        self._state: dict[tuple[str, str], str] = {}

    def unsupported(self, call: str, scope: str) -> bool:
        return (call, scope) in self._unsupported

    def ok(self, call: str, scope: str) -> None:
        key = (call, scope)
        if self._state.get(key, "ok") != "ok":
            with self._lock:
                previous = self._state.pop(key, "ok")
            log.info("NVML %s on %s answers again (was %s)", call, scope, previous)

    def failed(self, call: str, scope: str, exc: pynvml.NVMLError) -> None:
        code = error_code_name(exc)
        key = (call, scope)
        with self._lock:
            permanent = getattr(exc, "value", None) in _PERMANENT
            if permanent and key in self._unsupported:
                return
            self.errors[(call, code)] = self.errors.get((call, code), 0) + 1
            if permanent:
                self._unsupported.add(key)
            changed = self._state.get(key) != code
            self._state[key] = code
        if changed:
            if permanent:
                log.info("NVML %s is not available on %s (%s); not asking again", call, scope, code)
            else:
                log.warning("NVML %s failed on %s: %s", call, scope, code)

    def timed_out(self, call: str, scope: str) -> None:
        """Count a call that did not return within the exporter's deadline (the caller logs it)."""
        with self._lock:
            self.errors[(call, TIMED_OUT)] = self.errors.get((call, TIMED_OUT), 0) + 1

    def forget_scope(self, scope: str) -> None:
        """Forget "not supported" verdicts for a GPU (after it comes back from being lost)."""
        with self._lock:
            self._unsupported = {k for k in self._unsupported if k[1] != scope}

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.errors)
