"""Device IDs as device plugins hand them to the kubelet, decoded by parse_device_id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.resolve.podresources import DeviceRef, parse_device_id

GPU = "GPU-0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
MIG = "MIG-7f9e8d7c-6b5a-4f3e-9d2c-1b0a9f8e7d6c"


@pytest.mark.parametrize(
    ("device_id", "expected"),
    [
        pytest.param(GPU, DeviceRef(GPU, None, None, GPU), id="plain-gpu-uuid"),
        pytest.param(MIG, DeviceRef(MIG, MIG, None, MIG), id="mig-uuid"),
        pytest.param(f"MIG-{GPU}/3/0", DeviceRef(GPU, f"MIG-{GPU}/3/0", None, f"MIG-{GPU}/3/0"), id="old-mig-form"),
        pytest.param(f"{GPU}::0", DeviceRef(GPU, None, 0, f"{GPU}::0"), id="time-sliced-replica-0"),
        pytest.param(f"{GPU}::12", DeviceRef(GPU, None, 12, f"{GPU}::12"), id="time-sliced-replica-12"),
        pytest.param(f"{MIG}::7", DeviceRef(MIG, MIG, 7, f"{MIG}::7"), id="mig-with-sharing"),
        pytest.param(
            f"MIG-{GPU}/1/0::2", DeviceRef(GPU, f"MIG-{GPU}/1/0", 2, f"MIG-{GPU}/1/0::2"), id="old-mig-shared"
        ),
        pytest.param("nvidia0", DeviceRef("nvidia0", None, None, "nvidia0", gke_index=0), id="gke-plain"),
        pytest.param(
            "nvidia0/vgpu3",
            DeviceRef("nvidia0", None, 3, "nvidia0/vgpu3", gke_index=0),
            id="gke-time-sharing",
        ),
        pytest.param("nvidia2/gi3", DeviceRef("nvidia2", None, None, "nvidia2/gi3", gke_index=2), id="gke-mig"),
        pytest.param(
            "nvidia0/gi3/vgpu1",
            DeviceRef("nvidia0", None, 1, "nvidia0/gi3/vgpu1", gke_index=0),
            id="gke-mig-with-sharing",
        ),
        pytest.param(
            "nvidia12/vgpu0",
            DeviceRef("nvidia12", None, 0, "nvidia12/vgpu0", gke_index=12),
            id="gke-two-digits",
        ),
        pytest.param("card0", DeviceRef("card0", None, None, "card0"), id="unknown-scheme-kept-whole"),
        pytest.param(f"{GPU}::x", DeviceRef(f"{GPU}::x", None, None, f"{GPU}::x"), id="non-numeric-suffix"),
        pytest.param("", DeviceRef("", None, None, ""), id="empty"),
        pytest.param(f" {GPU} ", DeviceRef(GPU, None, None, f" {GPU} "), id="surrounding-space"),
    ],
)
def test_device_id_forms_are_decoded(device_id: str, expected: DeviceRef) -> None:
    assert parse_device_id(device_id) == expected


def test_non_ascii_digits_are_not_taken_for_a_replica_index() -> None:
    ref = parse_device_id(f"{GPU}::\u00b2")
    assert ref.replica is None
    assert ref.gpu_uuid == f"{GPU}::\u00b2"


@given(st.text())
def test_parse_device_id_never_raises_and_keeps_the_raw_id(device_id: str) -> None:
    ref = parse_device_id(device_id)
    assert ref.raw == device_id
    assert isinstance(ref.gpu_uuid, str)


@given(
    st.text(
        alphabet=st.characters(blacklist_characters=":", blacklist_categories=("Zs", "Zl", "Zp", "Cc")),
        min_size=1,
    ),
    st.integers(min_value=0, max_value=10**6),
)
def test_a_numeric_sharing_suffix_becomes_the_replica(base: str, replica: int) -> None:
    ref = parse_device_id(f"{base}::{replica}")
    assert ref.replica == replica
    assert ref.raw == f"{base}::{replica}"
    assert ref.mig_uuid in (None, base)
