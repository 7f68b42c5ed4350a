"""How much of a GPU an allocation holds, for GPU-hours and costs: a MIG instance its compute slices over the
card's, a container time-slicing or MPS-sharing a device with others its share of that device."""

from __future__ import annotations

import re

A30_PROFILES = ("1g.6gb", "1g.6gb+me", "2g.12gb", "4g.24gb")
"""MIG profiles of 4-slice cards (A30); every other card with MIG (A100, H100, H200, B200) has 7."""

SHARING_NOTE = (
    "a MIG instance counts as its compute slices over the card's (3g.40gb: 3/7 of a GPU; 4 slices on an A30); "
    "N containers time-slicing or MPS-sharing one GPU or MIG instance hold 1/N of it each"
)


def mig_fraction(profile: str) -> float | None:
    """The share of its GPU a MIG instance of ``profile`` holds: its compute slices over the card's
    (``3g.40gb``: 3/7; ``2g.12gb`` of an A30: 2/4); 1 for no profile; None for a name not understood."""
    if not profile:
        return 1.0
    match = re.fullmatch(r"(\d+)g\.\d+gb(\+\w+)?", profile)
    if match is None:
        return None
    card = 4 if profile in A30_PROFILES else 7
    return min(1.0, int(match.group(1)) / card)
