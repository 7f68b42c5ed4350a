"""Scenario time: seconds since the simulated node started, and the wall time that goes with it."""

from __future__ import annotations

import threading
import time


class SimClock:
    """Real time (optionally sped up) or, with ``manual=True``, time that moves only by ``advance``."""

    def __init__(
        self,
        *,
        speed: float = 1.0,
        manual: bool = False,
        start_wall: float | None = None,
        offset: float = 0.0,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"simulation speed must be positive, got {speed}")
        self.speed = speed  # scenario seconds per real second
        self.manual = manual
        self._start_mono = time.monotonic()
        self.offset = offset  # scenario second at which this clock starts
        self._start_wall = (time.time() if start_wall is None else start_wall) - offset  # unix seconds at t=0
        self._manual_t = offset
        self._lock = threading.Lock()

    def now(self) -> float:
        """Scenario seconds since start."""
        if self.manual:
            with self._lock:
                return self._manual_t
        return self.offset + (time.monotonic() - self._start_mono) * self.speed

    def wall(self) -> float:
        """Unix seconds of the current scenario instant (what NVML timestamps are based on)."""
        return self._start_wall + self.now()

    def advance(self, seconds: float) -> None:
        if not self.manual:
            raise RuntimeError("advance() is only for a manual clock")
        if seconds < 0:
            raise ValueError("time does not run backwards")
        with self._lock:
            self._manual_t += seconds
