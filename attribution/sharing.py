"""How much of a GPU an allocation holds, for GPU-hours and costs: a MIG instance its compute slices over the
card's, a time-sliced or MPS replica the fraction of its device the node advertises it as (1/N for N replicas),
or, where the node's agent does not publish what the kubelet advertises, its share of the containers holding
the device."""

from __future__ import annotations

import re

from common import catalog as c

A30_PROFILES = ("1g.6gb", "1g.6gb+me", "2g.12gb", "4g.24gb")
"""MIG profiles of 4-slice cards (A30); every other card with MIG (A100, H100, H200, B200) has 7."""

SHARING_NOTE = (
    "a MIG instance counts as its compute slices over the card's (3g.40gb: 3/7 of a GPU; 4 slices on an A30); "
    "a time-sliced or MPS replica of a GPU or MIG instance counts as 1/N of it for the N replicas the node "
    f"advertises ({c.GPU_ALLOCATABLE.name}), held or not, or, where that series is absent (a kubelet without "
    "GetAllocatableResources), as 1/N for N containers holding it"
)

SHARED = ("time-slicing", "mps", "mig-shared")
"""``sharing`` label values of an allocation that is a replica of a device (``gpuattr_container_gpu_allocated``)."""

SHARED_MATCHER = 'sharing=~"' + "|".join(SHARED) + '"'
"""The label matcher that selects those allocations."""

COUNTED = "counted"
"""The label :func:`held` adds when asked to mark how each allocation was counted: ``advertised`` or
``holders``."""


def held(alloc: str, advertised: str, *, mark: bool = False) -> str:
    """PromQL: each allocation series of ``alloc`` (``gpuattr_container_gpu_allocated``, value 1) as the share
    of its GPU or MIG instance it holds: 1 over the device IDs the node advertises for that device
    (``advertised``: a selector of ``gpuattr_gpu_allocatable_units``; 1 for a device given whole, N for N
    replicas), or, for a device without that series, 1 over the containers holding it. ``mark`` adds the label
    ``counted`` saying which of the two each share came from."""
    key = "gpu_uuid, mig_instance"
    units = f"max by ({key}) ({advertised})"
    by_units = f"({alloc} / on ({key}) group_left {units})"
    holders = f"count by ({key}) ({alloc})"
    by_holders = f"(({alloc} / on ({key}) group_left {holders}) unless on ({key}) {units})"
    if not mark:
        return f"({by_units} or {by_holders})"
    return (
        f'(label_replace({by_units}, "{COUNTED}", "advertised", "", "") '
        f'or label_replace({by_holders}, "{COUNTED}", "holders", "", ""))'
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


def unadvertised(shared: str, advertised: str) -> str:
    """PromQL: how many devices (GPUs, MIG instances) the allocations of ``shared`` (a selector of
    ``gpuattr_container_gpu_allocated`` with ``SHARED_MATCHER``) lie on for which ``advertised`` has no series,
    so that :func:`held` counts their holders; no sample when there are none."""
    key = "gpu_uuid, mig_instance"
    return f"count(count by ({key}) ({shared}) unless on ({key}) {advertised})"


def fallback_note(devices: int) -> str:
    """The problem to report when ``devices`` shared devices were counted by their holders."""
    return (
        f"{c.GPU_ALLOCATABLE.name} absent for {devices} shared GPU(s) or MIG instance(s) (a kubelet without "
        "GetAllocatableResources, or an older agent): their replicas are counted as 1/N for N containers holding "
        "them, not for the replicas the node advertises"
    )
