"""Listen addresses: ``HOST:PORT`` as every flag that takes one writes it."""

from __future__ import annotations

from common.quoting import InputError, short_repr


def host_port(text: str, what: str) -> tuple[str, int]:
    """``(host, port)`` of ``"0.0.0.0:9835"``, ``"[::1]:9835"`` or ``":9835"`` (all addresses); an
    InputError naming ``what`` (the flag) otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise InputError(f"{what}: expected HOST:PORT (e.g. 0.0.0.0:9100), got {short_repr(text)}")
    return host.strip("[]") or "0.0.0.0", int(port)
