"""The simulated driver asked through the real ``pynvml`` binding, as any NVML client would ask it."""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml

from simulator.clock import SimClock


def handle(index: int) -> Any:
    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def pids_and_mib(procs: list[Any]) -> list[tuple[int, int]]:
    """``[(pid, MiB)]`` in the driver's order, as the fixture's ``mps-nvml.txt`` prints them."""
    return [(int(p.pid), int(p.usedGpuMemory) // 2**20) for p in procs]


def raw_process_list(function: str, dev: Any) -> list[tuple[int, int]]:
    """Call a process-list C function (one the binding has no wrapper for, e.g. the unversioned ones) the
    way the binding's wrappers do: ask the count, then fill an array."""
    fn = pynvml._nvmlGetFunctionPointer(function)
    count = ctypes.c_uint(0)
    ret = fn(dev, ctypes.byref(count), None)
    if ret == pynvml.NVML_SUCCESS:
        return []
    assert ret == pynvml.NVML_ERROR_INSUFFICIENT_SIZE, ret
    infos = (pynvml.c_nvmlProcessInfo_v2_t * count.value)()
    assert fn(dev, ctypes.byref(count), infos) == pynvml.NVML_SUCCESS
    return [(int(infos[i].pid), int(infos[i].usedGpuMemory) // 2**20) for i in range(count.value)]


def samples(dev: Any, since_us: int) -> dict[int, tuple[int, int]]:
    """pid -> (smUtil, memUtil) from nvmlDeviceGetProcessUtilization; empty when the driver has none."""
    try:
        found = pynvml.nvmlDeviceGetProcessUtilization(dev, since_us)
    except pynvml.NVMLError_NotFound:
        return {}
    return {int(s.pid): (int(s.smUtil), int(s.memUtil)) for s in found}


def samples_info(dev: Any, since_us: int) -> dict[int, tuple[int, int]]:
    """pid -> (smUtil, memUtil) from nvmlDeviceGetProcessesUtilizationInfo; empty when the driver has none."""
    try:
        found = pynvml.nvmlDeviceGetProcessesUtilizationInfo(dev, since_us)
    except pynvml.NVMLError_NotFound:
        return {}
    return {int(s.pid): (int(s.smUtil), int(s.memUtil)) for s in found}


def gpm(dev: Any, clock: SimClock, seconds: float) -> dict[str, float]:
    """GPM metrics (0..1) over the next ``seconds`` of scenario time: two samples, then the metrics between."""
    first, second = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    try:
        pynvml.nvmlGpmSampleGet(dev, first)
        clock.advance(seconds)
        pynvml.nvmlGpmSampleGet(dev, second)
        ids = {
            "sm_active": pynvml.NVML_GPM_METRIC_SM_UTIL,
            "sm_occupancy": pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
            "tensor_active": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
            "dram_bandwidth": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
        }
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(ids)
        request.sample1, request.sample2 = first, second
        for i, metric_id in enumerate(ids.values()):
            request.metrics[i].metricId = metric_id
        pynvml.nvmlGpmMetricsGet(request)
        out = {}
        for i, name in enumerate(ids):
            assert request.metrics[i].nvmlReturn == pynvml.NVML_SUCCESS
            out[name] = request.metrics[i].value / 100.0
        return out
    finally:
        pynvml.nvmlGpmSampleFree(first)
        pynvml.nvmlGpmSampleFree(second)


def now_us(clock: SimClock) -> int:
    return int(clock.wall() * 1e6)
