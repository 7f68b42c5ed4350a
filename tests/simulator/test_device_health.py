"""The simulated driver's device health answers, asked through the real binding as any NVML client asks."""

from __future__ import annotations

from collections.abc import Iterator

import pynvml
import pytest

from common.quoting import InputError
from simulator import fake_nvml
from simulator.clock import SimClock
from simulator.scenario import HEALTH_MODELS, parse_scenario
from tests.simulator.nvml_calls import handle

ALL_LINKS = 0xFFFFFFFF


@pytest.fixture
def clock() -> Iterator[SimClock]:
    yield SimClock(manual=True, offset=5.0, start_wall=1_700_000_000.0)
    fake_nvml.uninstall()


def _install(clock: SimClock, *gpus: dict[str, object], busy: float = 0.0, on: tuple[int, ...] = (0,)) -> None:
    procs = [{"pid": 1, "name": "a", "gpus": list(on), "memory": "1GiB", "sm": busy}] if busy else []
    fake_nvml.install(parse_scenario({"name": "health", "gpus": list(gpus), "processes": procs}), clock)


@pytest.mark.parametrize("model", ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA L4"])
def test_clocks_are_the_models_idle_and_boost_values(clock: SimClock, model: str) -> None:
    _install(clock, {"index": 0, "model": model}, busy=0.7)
    dev = handle(0)
    expected = HEALTH_MODELS[model]
    assert pynvml.nvmlDeviceGetClockInfo(dev, pynvml.NVML_CLOCK_SM) == expected.sm_clock_max_mhz
    assert pynvml.nvmlDeviceGetClockInfo(dev, pynvml.NVML_CLOCK_MEM) == expected.memory_clock_mhz


def test_an_idle_h200_clocks_its_sms_down_as_the_real_one_did(clock: SimClock) -> None:
    _install(clock, {"index": 0, "model": "NVIDIA H200"})
    assert pynvml.nvmlDeviceGetClockInfo(handle(0), pynvml.NVML_CLOCK_SM) == 345  # fixtures/h200-real/env.txt


def test_each_field_carries_its_own_return_code(clock: SimClock) -> None:
    _install(clock, {"index": 0, "model": "NVIDIA H100 PCIe"})
    fields = [pynvml.NVML_FI_DEV_MEMORY_TEMP, pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT]
    temp, links = pynvml.nvmlDeviceGetFieldValues(handle(0), fields)
    assert temp.nvmlReturn == pynvml.NVML_SUCCESS and temp.value.uiVal == 33
    assert links.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # a PCIe card has no NVLink


def _nvlink_kib(dev: object, scope: int) -> int:
    (fv,) = pynvml.nvmlDeviceGetFieldValues(dev, [(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, scope)])
    assert fv.nvmlReturn == pynvml.NVML_SUCCESS
    return int(fv.value.ullVal)


def test_nvlink_counters_sum_over_links_and_never_go_back(clock: SimClock) -> None:
    _install(clock, {"index": 0}, {"index": 1}, busy=1.0, on=(0, 1))  # one job over two GPUs
    dev = handle(0)
    total = _nvlink_kib(dev, ALL_LINKS)
    assert total > 0
    assert abs(_nvlink_kib(dev, 0) * 18 - total) <= 18  # H100 SXM: 18 links, each an equal share
    clock.advance(1)
    assert _nvlink_kib(dev, ALL_LINKS) > total


def test_a_single_gpu_job_leaves_nvlink_idle(clock: SimClock) -> None:
    _install(clock, {"index": 0}, busy=1.0)
    clock.advance(1)
    assert _nvlink_kib(handle(0), ALL_LINKS) == 0


def test_xid_events_are_delivered_once_in_order_and_a_wait_without_one_times_out(clock: SimClock) -> None:
    xids = [{"at": 9, "xid": 48}, {"at": 7, "xid": 13}, {"at": 2, "xid": 31}]
    _install(clock, {"index": 0, "xid": xids})
    dev = handle(0)
    events = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(dev, pynvml.nvmlEventTypeXidCriticalError, events)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(events, 0)
    clock.advance(5)
    got = []
    for _ in range(2):
        data = pynvml.nvmlEventSetWait_v2(events, 0)
        assert data.eventType == pynvml.nvmlEventTypeXidCriticalError
        assert pynvml.nvmlDeviceGetIndex(data.device) == 0
        got.append(int(data.eventData))
    assert got == [13, 48]  # the XID 31 came before the registration
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(events, 0)
    pynvml.nvmlEventSetFree(events)


def test_remapped_rows_follow_the_scenario_and_gddr_cards_have_none(clock: SimClock) -> None:
    remap = [{"at": 3, "correctable": 2}, {"at": 8, "correctable": 2, "uncorrectable": 1, "failed": True}]
    _install(clock, {"index": 0, "row_remap": remap}, {"index": 1, "model": "NVIDIA L4"})
    assert pynvml.nvmlDeviceGetRemappedRows(handle(0)) == (2, 0, 0, 0)
    clock.advance(5)
    assert pynvml.nvmlDeviceGetRemappedRows(handle(0)) == (2, 1, 0, 1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetRemappedRows(handle(1))


def test_a_scenario_option_makes_the_encoder_not_supported(clock: SimClock) -> None:
    _install(clock, {"index": 0, "unsupported": ["nvmlDeviceGetEncoderUtilization"]})
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetEncoderUtilization(handle(0))
    assert pynvml.nvmlDeviceGetDecoderUtilization(handle(0))[0] == 0


def test_an_xid_code_must_be_positive() -> None:
    with pytest.raises(InputError, match=r"gpus\.0\.xid\.0\.xid"):
        parse_scenario({"name": "bad", "gpus": [{"index": 0, "xid": [{"at": 1, "xid": 0}]}]})
