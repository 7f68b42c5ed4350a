"""A simulated NVML library that sits *under* the ``pynvml`` binding.

``install()`` puts a fake in place of the loaded ``libnvidia-ml.so``: the binding's own Python
wrappers run unchanged, look their C functions up on this object, pass it their own ctypes structures
and turn the integer return codes into their own ``NVMLError`` subclasses. So the exporter's
production NVML code, and any other NVML client such as nvitop, runs in CI against a scenario.

Functions the simulated driver does not export raise AttributeError here, which the binding reports
as ``NVMLError_FunctionNotFound`` exactly as with an older real driver.

What the simulated driver reports follows a real H200's (``tests/fixtures/h200-real/``):

- **MPS** (a GPU with ``mps: true``): ``nvmlDeviceGetComputeRunningProcesses*`` list the MPS server first,
  then its clients with their memory; ``nvmlDeviceGetMPSComputeRunningProcesses*`` list the clients only.
  Per-process utilisation samples go to the server alone: smUtil is the clients' combined kernel-time
  share and memUtil their combined memory-controller share (each capped at 100); clients have none.
  Device utilisation, GPM and the simulated dcgm-exporter follow the clients' own activity.
- **Time-slicing** (``timeslice_swing`` above 0): each sample's split of kernel time between the processes
  of a GPU swings around their means, the sum per sample kept (see :func:`swing_split`).
- **Kernel time is not SM activity**: smUtil is a process's ``sm``; GPM SM active is ``sm × sm_fraction``
  and SM occupancy that times ``occupancy``, so a launch-bound loop of tiny kernels reads 20 % in NVML and
  a few hundredths of a percent in GPM.
- **Device health**: SM clocks sit at the model's floor when idle (345 MHz on the real H200) and at its boost
  clock while kernels run; the memory clock is fixed; HBM parts report a memory temperature and row
  remapping (GDDR parts answer NOT_SUPPORTED), SXM parts NVLink traffic from work spread over several GPUs
  (PCIe parts have no links); codecs read 0 on compute work. XID errors (``xid`` on a GPU) reach an event
  set registered before they happen, once each; a wait with none due answers TIMEOUT at once. Any NVML
  function, or NVML_FI_* field, named in a GPU's ``unsupported`` answers NOT_SUPPORTED.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import math
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pynvml

from simulator.clock import SimClock
from simulator.scenario import GpuSpec, ProcessSpec, Scenario

_DEVICE_BASE = 0x1000_0000
_DEVICE_STRIDE = 0x1_0000
_MAX_MIG_DEVICES = 7
_UTIL_BUFFER_S = 10.0  # how far back the simulated driver keeps per-process samples
_UTIL_PERIOD_S = 1.0  # averaging window of nvmlDeviceGetUtilizationRates
_SWING_SLOT_S = 1.0  # the driver's per-process sample period: one time-slice split per slot
_SWING_CONCENTRATION = 2.0  # Dirichlet concentration of a slot's split: two equal processes split uniformly

SUCCESS: int = pynvml.NVML_SUCCESS
NOT_SUPPORTED: int = pynvml.NVML_ERROR_NOT_SUPPORTED
NOT_FOUND: int = pynvml.NVML_ERROR_NOT_FOUND
INSUFFICIENT_SIZE: int = pynvml.NVML_ERROR_INSUFFICIENT_SIZE
INVALID_ARGUMENT: int = pynvml.NVML_ERROR_INVALID_ARGUMENT
UNINITIALIZED: int = pynvml.NVML_ERROR_UNINITIALIZED
GPU_IS_LOST: int = pynvml.NVML_ERROR_GPU_IS_LOST
DRIVER_NOT_LOADED: int = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
TIMEOUT: int = pynvml.NVML_ERROR_TIMEOUT

_ALL_LINKS = 0xFFFFFFFF  # a field's scopeId that asks for the sum over every NVLink link
_NVLINK_BYTES_PER_S = 40e9  # NVLink traffic, each direction, while kernels of multi-GPU work run all the time
_PCIE_KB_PER_S = {pynvml.NVML_PCIE_UTIL_TX_BYTES: (300, 250_000), pynvml.NVML_PCIE_UTIL_RX_BYTES: (500, 600_000)}
"""PCIe throughput in KB/s by counter: (idle, added when kernels run all the time)."""
_FIELD_NAMES: dict[int, tuple[str, ...]] = {}
"""NVML_FI_* names by field id, so a scenario's ``unsupported`` list can name a field."""
for _name in dir(pynvml):
    if _name.startswith("NVML_FI_") and isinstance(getattr(pynvml, _name), int):
        _FIELD_NAMES[getattr(pynvml, _name)] = (*_FIELD_NAMES.get(getattr(pynvml, _name), ()), _name)
_CODEC_PERIOD_US = 167_000  # the sampling period the driver reports with encoder/decoder utilisation
_SUPPORTED_EVENTS = (
    pynvml.nvmlEventTypeXidCriticalError
    | pynvml.nvmlEventTypeSingleBitEccError
    | pynvml.nvmlEventTypeDoubleBitEccError
    | pynvml.nvmlEventTypePState
    | pynvml.nvmlEventTypeClock
)

_MIG_CAPABLE = ("A100", "A30", "H100", "H200", "B200", "GB200")


def _val(arg: Any) -> int:
    """An integer argument, whether passed as a Python int or a ctypes scalar."""
    return int(getattr(arg, "value", arg))


def _out(arg: Any) -> Any:
    """The ctypes object behind a ``byref(...)`` argument."""
    return getattr(arg, "_obj", arg)


def _address(handle: Any) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def _set_pointer(pointer_obj: Any, address: int) -> None:
    ctypes.c_void_p.from_address(ctypes.addressof(pointer_obj)).value = address


def _put_string(buffer: Any, size: Any, text: str) -> int:
    data = text.encode()
    if len(data) + 1 > _val(size):
        return INSUFFICIENT_SIZE
    buffer.value = data
    return SUCCESS


@dataclass(frozen=True)
class _Target:
    gpu: int
    gi: int | None  # MIG GPU-instance id, None for the whole GPU


@dataclass(frozen=True)
class _GpmSample:
    target: _Target
    t: float


@dataclass
class _EventSet:
    """An NVML event set: the GPUs registered on it (since when, which types) and the events delivered."""

    registered: dict[int, tuple[float, int]]  # GPU index -> (scenario second registered, event type mask)
    delivered: set[tuple[int, int]]  # (GPU index, position in the GPU's xid list)


@dataclass(frozen=True)
class UtilSample:
    pid: int
    timestamp_us: int
    sm: int
    mem: int


def _slot_draw(seed: str) -> random.Random:
    """A random generator seeded from text, the same in every run and Python process."""
    digest = hashlib.sha256(seed.encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - a reproducible scenario, not a secret


def swing_split(means: dict[int, float], swing: float, seed: str) -> dict[int, float]:
    """One time-slice sample's kernel-time shares of the processes of a GPU (pid -> 0..1).

    ``means``: each process's mean share over the sample's window. The split mixes the mean split with a
    random one, ``(1 - swing) × m + swing × S × q``, where ``S`` is the sum of the means and ``q`` is drawn
    from a Dirichlet distribution whose expectation is the mean split (one gamma draw per process, seeded by
    ``seed`` and its pid): the sum ``S`` is kept in every sample and each process's expected share is its
    mean. A share above 1 is capped and its excess given to the other busy processes in proportion to their
    headroom (the sum stays exact, as each mean is at most 1). Processes with a zero mean stay at zero.
    """
    total = sum(means.values())
    if swing <= 0 or total <= 0:
        return dict(means)
    draws = {
        pid: _slot_draw(f"{seed}/{pid}").gammavariate(_SWING_CONCENTRATION * m / total, 1.0) if m > 0 else 0.0
        for pid, m in means.items()
    }
    drawn = sum(draws.values())
    if drawn <= 0 or not math.isfinite(drawn):
        return dict(means)
    split = {pid: (1 - swing) * m + swing * total * draws[pid] / drawn for pid, m in means.items()}
    excess = sum(v - 1.0 for v in split.values() if v > 1.0)
    if excess > 0:
        headroom = {pid: 1.0 - v for pid, v in split.items() if v < 1.0 and means[pid] > 0}
        room = sum(headroom.values())
        for pid, value in split.items():
            split[pid] = min(1.0, value) + (excess * headroom[pid] / room if pid in headroom and room else 0.0)
    return split


def _multi_gpu_pids(scenario: Scenario) -> set[int]:
    """Processes of work spread over several GPUs: on more than one themselves, a tensor-parallel vLLM worker,
    or one of a container's processes on different GPUs (data-parallel ranks)."""
    gpus_of: dict[str, set[int]] = {}
    for proc in scenario.processes:
        if proc.container is not None:
            gpus_of.setdefault(proc.container, set()).update(proc.gpus)
    return {
        proc.pid
        for proc in scenario.processes
        if len(proc.gpus) > 1
        or (proc.vllm is not None and proc.vllm.tensor_parallel > 1)
        or (proc.container is not None and len(gpus_of[proc.container]) > 1)
    }


class FakeNvmlLibrary:
    """The object ``pynvml.nvmlLib`` points at while a scenario is installed."""

    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        self.scenario = scenario
        self.clock = clock
        self.initialized = False
        self.calls: dict[str, int] = {}
        self._gpm_samples: dict[int, _GpmSample | None] = {}
        self._gpm_tokens = itertools.count(0x7000_0000, 0x10)
        self._lock = threading.Lock()
        self._missing = set(scenario.faults.missing_functions)
        self._uuids = {scenario.gpu_uuid(g.index): g.index for g in scenario.gpus}
        self._by_pid = {p.pid: p for p in scenario.processes}
        self._released = threading.Event()  # set on uninstall: calls blocked by a hang fault return
        self._alive_cache: tuple[float, dict[int, list[ProcessSpec]]] | None = None
        self._event_sets: dict[int, _EventSet] = {}
        self._event_tokens = itertools.count(0x6000_0000, 0x10)
        self._counters: dict[tuple[int, str], tuple[float, float]] = {}  # (GPU, name) -> (as of, total)
        self._multi_gpu = _multi_gpu_pids(scenario)

    # -- lookup as the binding does it: getattr(nvmlLib, "nvmlDeviceGetCount_v2") ---------------------
    def __getattr__(self, name: str) -> Callable[..., int]:
        if name.startswith("_") or name in self._missing:
            raise AttributeError(name)
        impl = getattr(type(self), "_fn_" + name, None)
        if impl is None:
            raise AttributeError(name)
        bound: Callable[..., int] = impl.__get__(self)

        def call(*args: Any) -> int:
            self.calls[name] = self.calls.get(name, 0) + 1
            if not self.initialized and name not in ("nvmlInitWithFlags", "nvmlInit_v2", "nvmlErrorString"):
                return UNINITIALIZED
            return bound(*args)

        call.__name__ = name
        return call

    # -- helpers ----------------------------------------------------------------------------------------
    def _t(self) -> float:
        return self.clock.now()

    def _gpu(self, index: int) -> GpuSpec:
        return self.scenario.gpus[index]

    def _lost(self, index: int) -> bool:
        spec = self._gpu(index)
        t = self._t()
        if spec.lost_at is None or t < spec.lost_at:
            return False
        return spec.recovers_at is None or t < spec.recovers_at

    def _target(self, handle: Any) -> _Target | None:
        address = _address(handle)
        offset = address - _DEVICE_BASE
        if offset < 0:
            return None
        index, low = divmod(offset, _DEVICE_STRIDE)
        if index >= len(self.scenario.gpus):
            return None
        if low == 0:
            return _Target(index, None)
        spec = self._gpu(index)
        if not spec.mig or low - 1 >= len(spec.mig):
            return None
        return _Target(index, spec.mig[low - 1].gi)

    def _check(self, name: str, handle: Any) -> tuple[_Target | None, int]:
        """Resolve a handle and apply the GPU's faults: (target, SUCCESS) or (None, error)."""
        target = self._target(handle)
        if target is None:
            return None, INVALID_ARGUMENT
        if self._lost(target.gpu):
            return None, GPU_IS_LOST
        spec = self._gpu(target.gpu)
        for hang in spec.hangs:
            active = hang.function == name and hang.at <= self._t() and (hang.until is None or self._t() < hang.until)
            if active and not self._block_until(hang.until):
                return None, UNINITIALIZED  # the simulation stopped under the call
        if name in spec.unsupported:
            return None, NOT_SUPPORTED
        if name in spec.failing:
            return None, int(getattr(pynvml, f"NVML_ERROR_{spec.failing[name]}"))
        return target, SUCCESS

    def _block_until(self, until: float | None) -> bool:
        """A call that hangs until scenario time reaches ``until`` (True), or the library is removed (False)."""
        while not self._released.is_set() and (until is None or self._t() < until):
            self._released.wait(0.01)
        return not self._released.is_set()

    def release(self) -> None:
        self._released.set()

    def processes_on(self, target: _Target, t: float) -> list[ProcessSpec]:
        return [p for p in self._alive_on_gpu(t).get(target.gpu, ()) if target.gi is None or p.mig == target.gi]

    def _alive_on_gpu(self, t: float) -> dict[int, list[ProcessSpec]]:
        """GPU index -> processes alive at ``t``; kept for one instant (a sample asks many times per GPU)."""
        cached = self._alive_cache
        if cached is not None and cached[0] == t:
            return cached[1]
        by_gpu: dict[int, list[ProcessSpec]] = {}
        # the MPS server first, as a real driver lists it (it started before its clients connected)
        for proc in sorted(self.scenario.processes, key=lambda p: not p.mps_server):
            if proc.alive(t):
                for gpu in proc.gpus:
                    by_gpu.setdefault(gpu, []).append(proc)
        self._alive_cache = (t, by_gpu)
        return by_gpu

    def process_memory(self, proc: ProcessSpec, t: float) -> int:
        raw = max(0.0, proc.memory.value(t))
        return int(raw // 2**20) * 2**20  # the driver reports whole MiB

    def _memory(self, target: _Target, t: float) -> tuple[int, int]:
        """(total, used) bytes of a GPU or MIG instance."""
        spec = self._gpu(target.gpu)
        used = sum(self.process_memory(p, t) for p in self.processes_on(target, t))
        if target.gi is None:
            return spec.memory_bytes, min(spec.memory_bytes, used + int(spec.reserved_memory))
        inst = spec.mig_instance(target.gi)
        assert inst is not None
        return inst.memory_bytes, min(inst.memory_bytes, used)

    def _activity(self, target: _Target, t0: float, t1: float) -> dict[str, float]:
        """Device-level activity (0..1) over [t0, t1] from the processes on the target."""
        sm = warps = tensor = kernel = dram = 0.0
        occupancies = set()
        for proc in self.processes_on(target, t1):
            lo = max(t0, proc.start)
            if lo >= t1:
                continue
            share = (t1 - lo) / (t1 - t0) if t1 > t0 else 1.0
            busy = proc.sm.mean(lo, t1) * share
            kernel += busy
            sm += busy * proc.sm_fraction
            tensor += busy * proc.tensor_fraction
            dram += proc.mem_bw.mean(lo, t1) * share
            warps += busy * proc.sm_fraction * proc.occupancy
            occupancies.add(proc.occupancy)
        # occupancy: SM active × the busy-SM-weighted occupancy of the processes (exactly one's when they agree)
        per_active = occupancies.pop() if len(occupancies) == 1 else (warps / sm if sm > 0 else 0.0)
        return {
            "kernel": min(1.0, kernel),
            "sm": min(1.0, sm),
            "occupancy": min(1.0, sm) * per_active,
            "tensor": min(1.0, tensor),
            "dram": min(1.0, dram),
        }

    def util_samples(self, target: _Target, last_seen_us: int) -> list[UtilSample]:
        """What the driver's per-process sample buffer holds newer than ``last_seen_us``."""
        t1 = self._t()
        now_us = int(self.clock.wall() * 1e6)
        if last_seen_us >= now_us:
            return []
        since = max((last_seen_us / 1e6) - self.clock.wall() + t1, t1 - _UTIL_BUFFER_S)
        faults = self.scenario.faults
        halves_per_call = 2 if faults.duplicate_util_samples else 1
        # (pid, half, a, b, sm, mem): each process's mean activity over its window
        rows: list[tuple[int, int, float, float, float, float]] = []
        for proc in self.processes_on(target, t1):
            if proc.mps_client:
                continue  # MPS clients' work is sampled under their server's PID
            lo = max(since, proc.start)
            if lo >= t1:
                continue
            halves = [(lo, (lo + t1) / 2), ((lo + t1) / 2, t1)] if halves_per_call == 2 else [(lo, t1)]
            for i, (a, b) in enumerate(halves):
                if proc.mps_server:
                    clients = self._activity(_Target(target.gpu, None), a, b)  # the server adds none of its own
                    rows.append((proc.pid, i, a, b, clients["kernel"], clients["dram"]))
                else:
                    rows.append((proc.pid, i, a, b, proc.sm.mean(a, b), proc.mem_bw.mean(a, b)))
        rows = self._swing(target, rows)
        out: list[UtilSample] = []
        for pid, i, a, b, sm_mean, mem_mean in rows:
            sm = round(sm_mean * 100)
            mem = round(mem_mean * 100)
            if pid in faults.util_over_100 and sm > 0:
                sm += 100
            if sm or mem:
                stamp = now_us - (halves_per_call - 1 - i) * max(1, int((b - a) * 1e6))
                out.append(UtilSample(pid, stamp, sm, mem))
        return out

    def _swing(
        self, target: _Target, rows: list[tuple[int, int, float, float, float, float]]
    ) -> list[tuple[int, int, float, float, float, float]]:
        """Apply the GPU's ``timeslice_swing`` to one call's samples: each group of samples taken together
        (the same half under the duplicate-samples fault) is split anew in the driver's sample slot of its end;
        memUtil moves by the same factor as smUtil."""
        swing = self._gpu(target.gpu).timeslice_swing
        if swing <= 0 or len(rows) < 2:
            return rows
        out = []
        for half in sorted({r[1] for r in rows}):
            group = [r for r in rows if r[1] == half]
            slot = math.floor(max(r[3] for r in group) / _SWING_SLOT_S)
            seed = f"{self.scenario.name}/{target.gpu}/{slot}"
            split = swing_split({r[0]: r[4] for r in group}, swing, seed)
            for pid, i, a, b, sm, mem in group:
                factor = split[pid] / sm if sm > 0 else 1.0
                out.append((pid, i, a, b, split[pid], min(1.0, mem * factor)))
        return out

    # -- library --------------------------------------------------------------------------------------
    def _fn_nvmlInitWithFlags(self, flags: Any) -> int:
        hang = self.scenario.faults.init_hangs_until
        if hang is not None and self._t() < hang and not self._block_until(hang):
            return UNINITIALIZED
        until = self.scenario.faults.driver_missing_until
        if until is not None and self._t() < until:
            return DRIVER_NOT_LOADED
        self.initialized = True
        return SUCCESS

    def _fn_nvmlInit_v2(self) -> int:
        return self._fn_nvmlInitWithFlags(0)

    def _fn_nvmlShutdown(self) -> int:
        self.initialized = False
        return SUCCESS

    def _fn_nvmlSystemGetDriverVersion(self, buffer: Any, size: Any) -> int:
        return _put_string(buffer, size, self.scenario.node.driver_version)

    def _fn_nvmlSystemGetNVMLVersion(self, buffer: Any, size: Any) -> int:
        return _put_string(buffer, size, "12." + self.scenario.node.driver_version)

    def _fn_nvmlSystemGetCudaDriverVersion(self, out: Any) -> int:
        _out(out).value = self.scenario.node.cuda_driver_version
        return SUCCESS

    _fn_nvmlSystemGetCudaDriverVersion_v2 = _fn_nvmlSystemGetCudaDriverVersion

    def _fn_nvmlSystemGetProcessName(self, pid: Any, buffer: Any, size: Any) -> int:
        wanted = _val(pid)
        proc = self._by_pid.get(wanted)
        if proc is None or not proc.alive(self._t()) or wanted in self.scenario.faults.vanish_between_calls:
            return NOT_FOUND
        return _put_string(buffer, size, proc.name)

    # -- enumeration ------------------------------------------------------------------------------------
    def _fn_nvmlDeviceGetCount_v2(self, out: Any) -> int:
        _out(out).value = len(self.scenario.gpus)
        return SUCCESS

    def _fn_nvmlDeviceGetHandleByIndex_v2(self, index: Any, out: Any) -> int:
        i = _val(index)
        if not 0 <= i < len(self.scenario.gpus):
            return INVALID_ARGUMENT
        _set_pointer(_out(out), _DEVICE_BASE + i * _DEVICE_STRIDE)
        return SUCCESS

    def _fn_nvmlDeviceGetHandleByUUID(self, uuid: Any, out: Any) -> int:
        raw = uuid.value if hasattr(uuid, "value") else uuid
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        index = self._uuids.get(text)
        if index is None:
            return NOT_FOUND
        _set_pointer(_out(out), _DEVICE_BASE + index * _DEVICE_STRIDE)
        return SUCCESS

    def _fn_nvmlDeviceGetIndex(self, handle: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetIndex", handle)
        if target is None:
            return ret
        _out(out).value = target.gpu
        return SUCCESS

    def _fn_nvmlDeviceGetMinorNumber(self, handle: Any, out: Any) -> int:
        return self._fn_nvmlDeviceGetIndex(handle, out)

    def _fn_nvmlDeviceGetUUID(self, handle: Any, buffer: Any, size: Any) -> int:
        target, ret = self._check("nvmlDeviceGetUUID", handle)
        if target is None:
            return ret
        if target.gi is None:
            return _put_string(buffer, size, self.scenario.gpu_uuid(target.gpu))
        return _put_string(buffer, size, self.scenario.mig_uuid(target.gpu, target.gi))

    def _fn_nvmlDeviceGetName(self, handle: Any, buffer: Any, size: Any) -> int:
        target, ret = self._check("nvmlDeviceGetName", handle)
        if target is None:
            return ret
        spec = self._gpu(target.gpu)
        if target.gi is None:
            return _put_string(buffer, size, spec.model)
        inst = spec.mig_instance(target.gi)
        assert inst is not None
        return _put_string(buffer, size, f"{spec.model} MIG {inst.profile}")

    def _fn_nvmlDeviceGetArchitecture(self, handle: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetArchitecture", handle)
        if target is None:
            return ret
        _out(out).value = self._gpu(target.gpu).arch
        return SUCCESS

    def _fn_nvmlDeviceGetCudaComputeCapability(self, handle: Any, major: Any, minor: Any) -> int:
        target, ret = self._check("nvmlDeviceGetCudaComputeCapability", handle)
        if target is None:
            return ret
        arch = self._gpu(target.gpu).arch
        _out(major).value, _out(minor).value = {6: (7, 5), 7: (8, 0), 8: (8, 9), 9: (9, 0), 10: (10, 0)}.get(
            arch, (0, 0)
        )
        return SUCCESS

    # -- memory, utilisation, power ---------------------------------------------------------------------
    def _fn_nvmlDeviceGetMemoryInfo(self, handle: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetMemoryInfo", handle)
        if target is None:
            return ret
        total, used = self._memory(target, self._t())
        mem = _out(out)
        mem.total, mem.used, mem.free = total, used, total - used
        return SUCCESS

    def _fn_nvmlDeviceGetMemoryInfo_v2(self, handle: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetMemoryInfo_v2", handle)
        if target is None:
            return ret
        total, used = self._memory(target, self._t())
        mem = _out(out)
        reserved = int(self._gpu(target.gpu).reserved_memory) if target.gi is None else 0
        mem.total, mem.reserved, mem.used = total, reserved, max(0, used - reserved)
        mem.free = total - used
        return SUCCESS

    def _fn_nvmlDeviceGetUtilizationRates(self, handle: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetUtilizationRates", handle)
        if target is None:
            return ret
        if self._gpu(target.gpu).mig:
            return NOT_SUPPORTED  # N/A under MIG, as on real drivers
        t = self._t()
        act = self._activity(target, max(0.0, t - _UTIL_PERIOD_S), t)
        util = _out(out)
        util.gpu, util.memory = round(act["kernel"] * 100), round(act["dram"] * 100)
        return SUCCESS

    def _board_power_w(self, index: int, t0: float, t1: float) -> float:
        idle, peak = self._gpu(index).power_range
        act = self._activity(_Target(index, None), t0, t1)
        return idle + (peak - idle) * (0.7 * act["sm"] + 0.3 * act["dram"])

    def _fn_nvmlDeviceGetPowerUsage(self, handle: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetPowerUsage", handle)
        if target is None:
            return ret
        if target.gi is not None:
            return NOT_SUPPORTED
        t = self._t()
        _out(out).value = int(self._board_power_w(target.gpu, max(0.0, t - _UTIL_PERIOD_S), t) * 1000)
        return SUCCESS

    def _fn_nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetTotalEnergyConsumption", handle)
        if target is None:
            return ret
        if target.gi is not None:
            return NOT_SUPPORTED
        t = self._t()
        joules = self._board_power_w(target.gpu, 0.0, t) * t if t > 0 else 0.0
        _out(out).value = int(1e9 + joules * 1000)  # millijoules since the (simulated) driver loaded
        return SUCCESS

    def _fn_nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetTemperature", handle)
        if target is None:
            return ret
        if target.gi is not None:
            return NOT_SUPPORTED
        t = self._t()
        act = self._activity(_Target(target.gpu, None), max(0.0, t - 30), t)
        _out(out).value = int(self._gpu(target.gpu).temperature_c + 40 * act["sm"])
        return SUCCESS

    def _fn_nvmlDeviceGetTemperatureV(self, handle: Any, out: Any) -> int:
        holder = ctypes.c_uint()
        ret = self._fn_nvmlDeviceGetTemperature(handle, 0, ctypes.byref(holder))
        if ret == SUCCESS:
            _out(out).temperature = holder.value
        return ret

    # -- device health ----------------------------------------------------------------------------------
    def _whole_gpu(self, name: str, handle: Any) -> tuple[_Target | None, int]:
        """A call that only the whole GPU answers: a MIG device handle gets NOT_SUPPORTED."""
        target, ret = self._check(name, handle)
        if target is not None and target.gi is not None:
            return None, NOT_SUPPORTED
        return target, ret

    def _recent(self, index: int, seconds: float) -> dict[str, float]:
        t = self._t()
        return self._activity(_Target(index, None), max(0.0, t - seconds), t)

    def _nvlink_bytes(self, index: int, name: str) -> float:
        """Bytes one direction of the GPU's NVLink carried since the driver loaded; grows between calls, never
        goes back. Only work spread over several GPUs talks over NVLink: a single-GPU job leaves it idle."""
        t = self._t()
        with self._lock:
            since, total = self._counters.get((index, name), (0.0, 0.0))
            if t > since:
                busy = 0.0
                for proc in self.processes_on(_Target(index, None), t):
                    lo = max(since, proc.start)
                    if proc.pid in self._multi_gpu and lo < t:
                        busy += proc.sm.mean(lo, t) * (t - lo) / (t - since)
                total += _NVLINK_BYTES_PER_S * min(1.0, busy) * (t - since)
                self._counters[(index, name)] = (t, total)
        return total

    def _fn_nvmlDeviceGetClockInfo(self, handle: Any, clock_type: Any, out: Any) -> int:
        target, ret = self._whole_gpu("nvmlDeviceGetClockInfo", handle)
        if target is None:
            return ret
        model = self._gpu(target.gpu).health_model
        kind = _val(clock_type)
        if kind in (pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_GRAPHICS):
            busy = self._recent(target.gpu, _UTIL_PERIOD_S)["kernel"] > 0
            _out(out).value = model.sm_clock_max_mhz if busy else model.sm_clock_idle_mhz
        elif kind == pynvml.NVML_CLOCK_MEM:
            _out(out).value = model.memory_clock_mhz
        else:
            return INVALID_ARGUMENT
        return SUCCESS

    def _field(self, target: _Target, field_id: int, scope_id: int) -> tuple[int, int] | None:
        """(value, NVML value type) of one field, or None when this GPU does not report it."""
        spec = self._gpu(target.gpu)
        links = spec.nvlink_links
        if field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP:
            if not spec.health_model.hbm:
                return None
            temp = spec.memory_temperature_c + 25 * self._recent(target.gpu, 30)["dram"]
            return int(temp), pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
        if field_id == pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT:
            return (links, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT) if links else None
        directions = (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX)
        if field_id in directions:
            if not links or (scope_id != _ALL_LINKS and scope_id >= links):
                return None
            total = self._nvlink_bytes(target.gpu, f"nvlink{field_id}")
            share = 1.0 if scope_id == _ALL_LINKS else 1.0 / links
            return int(total * share / 1024), pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG  # KiB since driver load
        if field_id == pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER:
            return spec.pcie_replays, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
        return None

    def _fn_nvmlDeviceGetFieldValues(self, handle: Any, count: Any, values_ref: Any) -> int:
        target, ret = self._whole_gpu("nvmlDeviceGetFieldValues", handle)
        if target is None:
            return ret
        values = _out(values_ref)
        unsupported = self._gpu(target.gpu).unsupported
        now_us = int(self.clock.wall() * 1e6)
        for i in range(_val(count)):
            fv = values[i]
            names = _FIELD_NAMES.get(fv.fieldId, ())
            found = None if any(n in unsupported for n in names) else self._field(target, fv.fieldId, fv.scopeId)
            fv.timestamp, fv.latencyUsec = now_us, 0
            if found is None:
                fv.nvmlReturn, fv.value.ullVal = NOT_SUPPORTED, 0
                continue
            value, value_type = found
            fv.nvmlReturn, fv.valueType = SUCCESS, value_type
            if value_type == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT:
                fv.value.uiVal = value
            else:
                fv.value.ullVal = value
        return SUCCESS

    def _codec(self, name: str, handle: Any, util: Any, period: Any) -> int:
        target, ret = self._whole_gpu(name, handle)
        if target is None:
            return ret
        _out(util).value, _out(period).value = 0, _CODEC_PERIOD_US  # compute work leaves NVENC/NVDEC idle
        return SUCCESS

    def _fn_nvmlDeviceGetEncoderUtilization(self, handle: Any, util: Any, period: Any) -> int:
        return self._codec("nvmlDeviceGetEncoderUtilization", handle, util, period)

    def _fn_nvmlDeviceGetDecoderUtilization(self, handle: Any, util: Any, period: Any) -> int:
        return self._codec("nvmlDeviceGetDecoderUtilization", handle, util, period)

    def _fn_nvmlDeviceGetPcieReplayCounter(self, handle: Any, out: Any) -> int:
        target, ret = self._whole_gpu("nvmlDeviceGetPcieReplayCounter", handle)
        if target is None:
            return ret
        _out(out).value = self._gpu(target.gpu).pcie_replays
        return SUCCESS

    def _fn_nvmlDeviceGetPcieThroughput(self, handle: Any, counter: Any, out: Any) -> int:
        target, ret = self._whole_gpu("nvmlDeviceGetPcieThroughput", handle)
        if target is None:
            return ret
        rates = _PCIE_KB_PER_S.get(_val(counter))
        if rates is None:
            return INVALID_ARGUMENT
        idle, busy = rates
        _out(out).value = int(idle + busy * self._recent(target.gpu, 0.02)["kernel"])  # a 20 ms window
        return SUCCESS

    def _fn_nvmlDeviceGetRemappedRows(self, handle: Any, corr: Any, unc: Any, pending: Any, failed: Any) -> int:
        target, ret = self._whole_gpu("nvmlDeviceGetRemappedRows", handle)
        if target is None:
            return ret
        spec = self._gpu(target.gpu)
        if not spec.health_model.hbm:
            return NOT_SUPPORTED  # row remapping is an HBM feature (A100 and newer data-centre parts)
        state = spec.row_remap_at(self._t())
        _out(corr).value, _out(unc).value = state.correctable, state.uncorrectable
        _out(pending).value, _out(failed).value = int(state.pending), int(state.failed)
        return SUCCESS

    # -- events -----------------------------------------------------------------------------------------
    def _fn_nvmlEventSetCreate(self, out: Any) -> int:
        with self._lock:
            token = next(self._event_tokens)
            self._event_sets[token] = _EventSet({}, set())
        _set_pointer(_out(out), token)
        return SUCCESS

    def _fn_nvmlEventSetFree(self, event_set: Any) -> int:
        with self._lock:
            if self._event_sets.pop(_address(event_set), None) is None:
                return INVALID_ARGUMENT
        return SUCCESS

    def _fn_nvmlDeviceGetSupportedEventTypes(self, handle: Any, out: Any) -> int:
        target, ret = self._whole_gpu("nvmlDeviceGetSupportedEventTypes", handle)
        if target is None:
            return ret
        _out(out).value = _SUPPORTED_EVENTS
        return SUCCESS

    def _fn_nvmlDeviceRegisterEvents(self, handle: Any, event_types: Any, event_set: Any) -> int:
        target, ret = self._whole_gpu("nvmlDeviceRegisterEvents", handle)
        if target is None:
            return ret
        types = _val(event_types)
        if types & ~_SUPPORTED_EVENTS:
            return NOT_SUPPORTED
        with self._lock:
            registered = self._event_sets.get(_address(event_set))
            if registered is None:
                return INVALID_ARGUMENT
            since, mask = registered.registered.get(target.gpu, (self._t(), 0))
            registered.registered[target.gpu] = (since, mask | types)
        return SUCCESS

    def _fn_nvmlEventSetWait_v2(self, event_set: Any, data_ref: Any, timeout_ms: Any) -> int:
        """The oldest XID not yet delivered on this set (raised after the GPU was registered); TIMEOUT if none.

        It never blocks: the simulation has no other thread to raise an event while a caller waits."""
        t = self._t()
        with self._lock:
            registered = self._event_sets.get(_address(event_set))
            if registered is None:
                return INVALID_ARGUMENT
            if any("nvmlEventSetWait_v2" in self._gpu(gpu).unsupported for gpu in registered.registered):
                return NOT_SUPPORTED
            due = [
                (xid.at, gpu, i, xid.xid)
                for gpu, (since, mask) in registered.registered.items()
                if mask & pynvml.nvmlEventTypeXidCriticalError
                for i, xid in enumerate(self._gpu(gpu).xid)
                if since <= xid.at <= t and (gpu, i) not in registered.delivered
            ]
            if not due:
                return TIMEOUT
            _at, gpu, i, code = min(due)
            registered.delivered.add((gpu, i))
        data = _out(data_ref)
        data.device = ctypes.cast(_DEVICE_BASE + gpu * _DEVICE_STRIDE, pynvml.c_nvmlDevice_t)
        data.eventType, data.eventData = pynvml.nvmlEventTypeXidCriticalError, code
        data.gpuInstanceId = data.computeInstanceId = 0xFFFFFFFF
        return SUCCESS

    # -- MIG --------------------------------------------------------------------------------------------
    def _fn_nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> int:
        target, ret = self._check("nvmlDeviceGetMigMode", handle)
        if target is None:
            return ret
        spec = self._gpu(target.gpu)
        if not spec.mig and not any(m in spec.model for m in _MIG_CAPABLE):
            return NOT_SUPPORTED
        mode = 1 if spec.mig else 0
        _out(current).value, _out(pending).value = mode, mode
        return SUCCESS

    def _fn_nvmlDeviceIsMigDeviceHandle(self, handle: Any, out: Any) -> int:
        target = self._target(handle)
        if target is None:
            return INVALID_ARGUMENT
        _out(out).value = int(target.gi is not None)
        return SUCCESS

    def _fn_nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetMaxMigDeviceCount", handle)
        if target is None:
            return ret
        if not self._gpu(target.gpu).mig:
            return NOT_SUPPORTED
        _out(out).value = _MAX_MIG_DEVICES
        return SUCCESS

    def _fn_nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, out: Any) -> int:
        target, ret = self._check("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if target is None:
            return ret
        spec = self._gpu(target.gpu)
        i = _val(index)
        if not spec.mig:
            return NOT_SUPPORTED
        if i >= len(spec.mig):
            return NOT_FOUND
        _set_pointer(_out(out), _DEVICE_BASE + target.gpu * _DEVICE_STRIDE + i + 1)
        return SUCCESS

    def _fn_nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any, out: Any) -> int:
        target = self._target(handle)
        if target is None or target.gi is None:
            return INVALID_ARGUMENT
        _set_pointer(_out(out), _DEVICE_BASE + target.gpu * _DEVICE_STRIDE)
        return SUCCESS

    def _fn_nvmlDeviceGetGpuInstanceId(self, handle: Any, out: Any) -> int:
        target = self._target(handle)
        if target is None or target.gi is None:
            return INVALID_ARGUMENT
        _out(out).value = target.gi
        return SUCCESS

    def _fn_nvmlDeviceGetComputeInstanceId(self, handle: Any, out: Any) -> int:
        target = self._target(handle)
        if target is None or target.gi is None:
            return INVALID_ARGUMENT
        inst = self._gpu(target.gpu).mig_instance(target.gi)
        assert inst is not None
        _out(out).value = inst.ci
        return SUCCESS

    # -- processes --------------------------------------------------------------------------------------
    def _running(
        self, name: str, handle: Any, count: Any, infos: Any, *, graphics: bool = False, mps: bool = False
    ) -> int:
        """The compute (MPS server and clients alike), graphics (none) or MPS (clients only) processes."""
        target, ret = self._check(name, handle)
        if target is None:
            return ret
        t = self._t()
        procs = [] if graphics else self.processes_on(target, t)
        if mps:
            procs = [p for p in procs if p.mps_client]
        holder = _out(count)
        if infos is None or holder.value < len(procs):
            holder.value = len(procs)
            return SUCCESS if not procs else INSUFFICIENT_SIZE
        spec = self._gpu(target.gpu)
        for i, proc in enumerate(procs):
            infos[i].pid = proc.pid
            infos[i].usedGpuMemory = self.process_memory(proc, t)
            if hasattr(infos[i], "gpuInstanceId"):
                if spec.mig and proc.mig is not None:
                    inst = spec.mig_instance(proc.mig)
                    assert inst is not None
                    infos[i].gpuInstanceId, infos[i].computeInstanceId = inst.gi, inst.ci
                else:
                    infos[i].gpuInstanceId = infos[i].computeInstanceId = 0xFFFFFFFF
        holder.value = len(procs)
        return SUCCESS

    def _fn_nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> int:
        return self._running("nvmlDeviceGetComputeRunningProcesses_v3", handle, count, infos)

    def _fn_nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any, count: Any, infos: Any) -> int:
        return self._running("nvmlDeviceGetComputeRunningProcesses_v2", handle, count, infos)

    def _fn_nvmlDeviceGetComputeRunningProcesses(self, handle: Any, count: Any, infos: Any) -> int:
        return self._running("nvmlDeviceGetComputeRunningProcesses", handle, count, infos)

    def _fn_nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> int:
        return self._running("nvmlDeviceGetGraphicsRunningProcesses_v3", handle, count, infos, graphics=True)

    _fn_nvmlDeviceGetGraphicsRunningProcesses_v2 = _fn_nvmlDeviceGetGraphicsRunningProcesses_v3

    def _fn_nvmlDeviceGetMPSComputeRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> int:
        return self._running("nvmlDeviceGetMPSComputeRunningProcesses_v3", handle, count, infos, mps=True)

    def _fn_nvmlDeviceGetMPSComputeRunningProcesses_v2(self, handle: Any, count: Any, infos: Any) -> int:
        return self._running("nvmlDeviceGetMPSComputeRunningProcesses_v2", handle, count, infos, mps=True)

    def _fn_nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Any, count: Any, infos: Any) -> int:
        return self._running("nvmlDeviceGetMPSComputeRunningProcesses", handle, count, infos, mps=True)

    def _util_target(self, name: str, handle: Any) -> tuple[_Target | None, int]:
        target, ret = self._check(name, handle)
        if target is None:
            return None, ret
        if self._gpu(target.gpu).mig:
            return None, NOT_SUPPORTED  # per-process utilisation is not supported on MIG-enabled GPUs
        return target, SUCCESS

    def _fn_nvmlDeviceGetProcessUtilization(self, handle: Any, samples: Any, count: Any, last_seen: Any) -> int:
        target, ret = self._util_target("nvmlDeviceGetProcessUtilization", handle)
        if target is None:
            return ret
        found = self.util_samples(target, _val(last_seen))
        if not found:
            return NOT_FOUND
        holder = _out(count)
        if samples is None or holder.value < len(found):
            holder.value = len(found)
            return INSUFFICIENT_SIZE
        for i, s in enumerate(found):
            samples[i].pid, samples[i].timeStamp = s.pid, s.timestamp_us
            samples[i].smUtil, samples[i].memUtil = s.sm, s.mem
            samples[i].encUtil = samples[i].decUtil = 0
        holder.value = len(found)
        return SUCCESS

    def _fn_nvmlDeviceGetProcessesUtilizationInfo(self, handle: Any, info_ref: Any) -> int:
        target, ret = self._util_target("nvmlDeviceGetProcessesUtilizationInfo", handle)
        if target is None:
            return ret
        info = _out(info_ref)
        found = self.util_samples(target, int(info.lastSeenTimeStamp))
        if not found:
            return NOT_FOUND
        if not info.procUtilArray or info.processSamplesCount < len(found):
            info.processSamplesCount = len(found)
            return INSUFFICIENT_SIZE
        for i, s in enumerate(found):
            row = info.procUtilArray[i]
            row.pid, row.timeStamp, row.smUtil, row.memUtil = s.pid, s.timestamp_us, s.sm, s.mem
            row.encUtil = row.decUtil = row.jpgUtil = row.ofaUtil = 0
        info.processSamplesCount = len(found)
        return SUCCESS

    # -- GPM (Hopper and newer) -------------------------------------------------------------------------
    def _fn_nvmlGpmQueryDeviceSupport(self, handle: Any, out: Any) -> int:
        target, ret = self._check("nvmlGpmQueryDeviceSupport", handle)
        if target is None:
            return ret
        _out(out).isSupportedDevice = int(self._gpu(target.gpu).arch >= pynvml.NVML_DEVICE_ARCH_HOPPER)
        return SUCCESS

    def _fn_nvmlGpmSampleAlloc(self, out: Any) -> int:
        with self._lock:
            token = next(self._gpm_tokens)
            self._gpm_samples[token] = None
        _set_pointer(_out(out), token)
        return SUCCESS

    def _fn_nvmlGpmSampleFree(self, sample: Any) -> int:
        with self._lock:
            if self._gpm_samples.pop(_address(sample), "missing") == "missing":
                return INVALID_ARGUMENT
        return SUCCESS

    def _gpm_take(self, target: _Target, sample: Any) -> int:
        if self._gpu(target.gpu).arch < pynvml.NVML_DEVICE_ARCH_HOPPER:
            return NOT_SUPPORTED
        token = _address(sample)
        with self._lock:
            if token not in self._gpm_samples:
                return INVALID_ARGUMENT
            self._gpm_samples[token] = _GpmSample(target, self._t())
        return SUCCESS

    def _fn_nvmlGpmSampleGet(self, handle: Any, sample: Any) -> int:
        target, ret = self._check("nvmlGpmSampleGet", handle)
        if target is None:
            return ret
        return self._gpm_take(target, sample)

    def _fn_nvmlGpmMigSampleGet(self, handle: Any, gpu_instance_id: Any, sample: Any) -> int:
        target, ret = self._check("nvmlGpmMigSampleGet", handle)
        if target is None:
            return ret
        gi = _val(gpu_instance_id)
        if self._gpu(target.gpu).mig_instance(gi) is None:
            return INVALID_ARGUMENT
        return self._gpm_take(_Target(target.gpu, gi), sample)

    def _fn_nvmlGpmMetricsGet(self, request_ref: Any) -> int:
        request = _out(request_ref)
        with self._lock:
            first = self._gpm_samples.get(_address(request.sample1))
            second = self._gpm_samples.get(_address(request.sample2))
        if first is None or second is None or first.target != second.target:
            return INVALID_ARGUMENT
        if self._lost(first.target.gpu):
            return GPU_IS_LOST
        act = self._activity(first.target, min(first.t, second.t), max(first.t, second.t))
        by_id = {
            pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: act["kernel"],
            pynvml.NVML_GPM_METRIC_SM_UTIL: act["sm"],
            pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: act["occupancy"],
            pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: act["tensor"],
            pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: act["dram"],
        }
        for i in range(request.numMetrics):
            metric = request.metrics[i]
            value = by_id.get(metric.metricId)
            if value is None:
                metric.nvmlReturn, metric.value = NOT_SUPPORTED, 0.0
            else:
                metric.nvmlReturn, metric.value = SUCCESS, value * 100.0
        return SUCCESS


_install_lock = threading.Lock()


def install(scenario: Scenario, clock: SimClock) -> FakeNvmlLibrary:
    """Put the simulated library under the ``pynvml`` binding (until ``uninstall``)."""
    fake = FakeNvmlLibrary(scenario, clock)
    with _install_lock:
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml.nvmlLib = fake
    return fake


def uninstall() -> None:
    with _install_lock:
        if isinstance(pynvml.nvmlLib, FakeNvmlLibrary):
            pynvml.nvmlLib.release()
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml.nvmlLib = None
        pynvml._nvmlLib_refcount = 0


@contextmanager
def installed(scenario: Scenario, clock: SimClock) -> Iterator[FakeNvmlLibrary]:
    fake = install(scenario, clock)
    try:
        yield fake
    finally:
        uninstall()
