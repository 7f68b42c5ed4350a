"""Units: byte sizes (GiB = 2^30 bytes), Prometheus durations, and how both are written for people."""

from __future__ import annotations

import math
import re

from common.quoting import short_repr

KiB = 2**10
MiB = 2**20
GiB = 2**30
TiB = 2**40

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
}


def finite(value: float | int, what: object) -> float:
    """``value`` as a float; ValueError (quoting ``what``) when it is infinite, NaN or too large for a float."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {short_repr(what)}")
    return number


def parse_size(value: str | float | int) -> float:
    """Bytes from ``"40GiB"``, ``"512 MiB"``, ``"1.5GB"`` (decimal) or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {short_repr(value)}")
        return finite(value, value)
    if not isinstance(value, str):
        raise ValueError(f"not a size: {short_repr(value)} (expected e.g. '40GiB', '512MiB', '1.5GB' or bytes)")
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a size: {short_repr(value)} (expected e.g. '40GiB', '512MiB', '1.5GB' or bytes)")
    number, unit = match.groups()
    return finite(float(number) * _SIZE_UNITS[(unit or "b").lower()], value)


def gib(n: float | None, digits: int = 2) -> str:
    """``n`` bytes in GiB, e.g. ``"7.45 GiB"``; ``"-"`` when unknown."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    return f"{n / GiB:.{digits}f} GiB"


# Prometheus durations: https://prometheus.io/docs/prometheus/latest/querying/basics/#time-durations
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
_DURATION_ORDER = ("y", "w", "d", "h", "m", "s", "ms")


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in a Prometheus duration such as ``7d``, ``1h30m`` or ``500ms``.

    Units run from largest to smallest, each at most once, as Prometheus requires; anything else is a
    ValueError naming ``what``.
    """
    parts = _DURATION_PART.findall(text) if isinstance(text, str) else []
    units = [u for _, u in parts]
    ordered = sorted(units, key=_DURATION_ORDER.index) == units and len(set(units)) == len(units)
    if not parts or "".join(n + u for n, u in parts) != text or not ordered:
        raise ValueError(f"{what}: expected a Prometheus duration such as 7d, 6h or 1h30m, got {short_repr(text)}")
    return float(sum(int(n) * _DURATION_UNITS[u] for n, u in parts))


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for a whole number of seconds (``90`` → ``1m30s``)."""
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"not a positive whole number of seconds: {seconds!r}")
    rest = int(seconds)
    out = []
    for unit in ("w", "d", "h", "m", "s"):
        size = int(_DURATION_UNITS[unit])
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)
