"""Time series for the simulated node: a value at time t and its exact mean over an interval.

Scenario files describe memory and activity as constants, piecewise-linear points (ramps) or square
waves (bursts). Means over an interval are computed in closed form, so the fake NVML can answer
"average SM activity since the last sample" exactly, however long the interval.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from common.quoting import short_repr
from common.units import finite as _finite
from common.units import parse_size

__all__ = ["Burst", "Constant", "Points", "Signal", "signal_from_spec"]

_TINY_S = 1e-6  # intervals shorter than a microsecond are read as a point


@runtime_checkable
class Signal(Protocol):
    """A scalar function of scenario time (seconds since the scenario started)."""

    def value(self, t: float) -> float: ...

    def mean(self, t0: float, t1: float) -> float:
        """Mean over [t0, t1]; the value at t0 when the interval is empty."""
        ...


@dataclass(frozen=True)
class Constant:
    level: float

    def value(self, t: float) -> float:
        return self.level

    def mean(self, t0: float, t1: float) -> float:
        return self.level


@dataclass(frozen=True)
class Points:
    """Piecewise-linear through (t, v) points; holds the first and last value outside them."""

    ts: tuple[float, ...]
    vs: tuple[float, ...]

    @classmethod
    def of(cls, points: Sequence[tuple[float, float]]) -> Points:
        if not points:
            raise ValueError("a points signal needs at least one (t, value) pair")
        ts = tuple(float(p[0]) for p in points)
        if any(b < a for a, b in itertools.pairwise(ts)):
            raise ValueError(f"points must be in time order, got times {list(ts)}")
        return cls(ts, tuple(float(p[1]) for p in points))

    def value(self, t: float) -> float:
        ts, vs = self.ts, self.vs
        if t <= ts[0]:
            return vs[0]
        if t >= ts[-1]:
            return vs[-1]
        i = bisect.bisect_right(ts, t)
        t0, t1, v0, v1 = ts[i - 1], ts[i], vs[i - 1], vs[i]
        if t1 == t0:
            return v1
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    def _integral(self, t: float) -> float:
        """Integral from ts[0] to t (negative side held constant)."""
        ts, vs = self.ts, self.vs
        if t <= ts[0]:
            return (t - ts[0]) * vs[0]
        total = 0.0
        for i in range(1, len(ts)):
            a, b = ts[i - 1], ts[i]
            if t <= a:
                return total
            if b > a:  # a zero-length segment is a step: it adds nothing
                end = min(t, b)
                # the segment's own endpoints, not value(): at a step value() gives the level before it
                v_end = vs[i - 1] + (vs[i] - vs[i - 1]) * (end - a) / (b - a)
                total += (end - a) * (vs[i - 1] + v_end) / 2
            if t <= b:
                return total
        return total + (t - ts[-1]) * vs[-1]

    def mean(self, t0: float, t1: float) -> float:
        if t1 - t0 < _TINY_S:  # too short to difference integrals without losing every digit
            return self.value((t0 + t1) / 2)
        return (self._integral(t1) - self._integral(t0)) / (t1 - t0)


@dataclass(frozen=True)
class Burst:
    """A square wave: ``high`` for ``duty`` of each ``period`` seconds, ``low`` otherwise."""

    period: float
    duty: float
    high: float
    low: float = 0.0
    phase: float = 0.0

    def __post_init__(self) -> None:
        if self.period <= 0:
            raise ValueError(f"burst period must be positive, got {self.period}")
        if not 0 <= self.duty <= 1:
            raise ValueError(f"burst duty must be within 0..1, got {self.duty}")

    def value(self, t: float) -> float:
        pos = ((t - self.phase) / self.period) % 1.0
        return self.high if pos < self.duty else self.low

    def _integral(self, t: float) -> float:
        x = (t - self.phase) / self.period
        whole = math.floor(x)
        frac = x - whole
        per_cycle = self.duty * self.high + (1 - self.duty) * self.low
        part = min(frac, self.duty) * self.high + max(0.0, frac - self.duty) * self.low
        return (whole * per_cycle + part) * self.period

    def mean(self, t0: float, t1: float) -> float:
        if t1 - t0 < _TINY_S:  # too short to difference integrals without losing every digit
            return self.value((t0 + t1) / 2)
        return (self._integral(t1) - self._integral(t0)) / (t1 - t0)


def signal_from_spec(spec: object, *, size: bool = False, where: str = "signal") -> Signal:
    """Build a signal from its scenario form; ``size`` accepts byte strings such as ``"40GiB"``.

    Forms: a number (or size string), ``"idle"``, ``{"points": [[t, v], ...]}``,
    ``{"ramp": {"from": v0, "to": v1, "start": t0, "end": t1}}``,
    ``{"burst": {"period": s, "duty": 0..1, "high": v, "low": v, "phase": s}}``.
    """

    def scalar(v: object) -> float:
        if size and isinstance(v, str | int | float):
            return parse_size(v)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return _finite(v, v)
        raise ValueError(f"{where}: expected a number, got {short_repr(v)}")

    def number(body: dict[Any, Any], key: str, default: float | None = None) -> float:
        """A time or shape field of a ramp or burst (a number, or a string float() reads)."""
        if key not in body:
            if default is None:
                raise ValueError(f"{where}: {kind} needs {key!r}, got {short_repr(body)}")
            return default
        v = body[key]
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError(f"{where}: {kind} {key} must be a number, got {short_repr(v)}")
        try:
            return _finite(float(v), v)
        except (ValueError, OverflowError):
            raise ValueError(f"{where}: {kind} {key} must be a finite number, got {short_repr(v)}") from None

    if spec == "idle":
        return Constant(0.0)
    if isinstance(spec, str | int | float) and not isinstance(spec, bool):
        return Constant(scalar(spec))
    if isinstance(spec, dict) and len(spec) == 1:
        ((kind, body),) = spec.items()
        if kind == "points" and isinstance(body, list):
            pairs: list[tuple[float, float]] = []
            for item in body:
                if not (isinstance(item, list | tuple) and len(item) == 2):
                    raise ValueError(f"{where}: each point must be [t, value], got {short_repr(item)}")
                pairs.append((number({"t": item[0]}, "t"), scalar(item[1])))
            return Points.of(pairs)
        if kind == "ramp" and isinstance(body, dict):
            unknown = set(body) - {"from", "to", "start", "end"}
            if unknown:
                raise ValueError(f"{where}: unknown ramp keys {sorted(unknown)}")
            start, end = number(body, "start", 0.0), number(body, "end")
            if "to" not in body:
                raise ValueError(f"{where}: ramp needs 'to', got {short_repr(body)}")
            return Points.of([(start, scalar(body.get("from", 0))), (end, scalar(body["to"]))])
        if kind == "burst" and isinstance(body, dict):
            unknown = set(body) - {"period", "duty", "high", "low", "phase"}
            if unknown:
                raise ValueError(f"{where}: unknown burst keys {sorted(unknown)}")
            if "high" not in body:
                raise ValueError(f"{where}: burst needs 'high', got {short_repr(body)}")
            return Burst(
                period=number(body, "period"),
                duty=number(body, "duty"),
                high=scalar(body["high"]),
                low=scalar(body.get("low", 0)),
                phase=number(body, "phase", 0.0),
            )
    raise ValueError(
        f"{where}: cannot read {short_repr(spec)}; use a number, 'idle', {{points: [[t, v], ...]}}, "
        "{ramp: {from, to, start, end}} or {burst: {period, duty, high, low}}"
    )
