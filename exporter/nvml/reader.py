"""A typed facade over NVML (``pynvml``): one call per sample reads a whole node.

Every NVML call goes through ``_call``, so a call that is not supported, or fails on one GPU, degrades
that one value (None) and is counted; a GPU that falls off the bus is marked down and the others are
still read; a missing driver leaves ``nvml_up`` false and initialisation is retried on each sample.

Each GPU is read on a thread of its own, and the node-level calls on another, under one deadline per
sample (``call_timeout_s``), through ``exporter.nvml.workers``. A call that does not return in time is not
waited for again: that GPU is reported down with the call that hangs named (``GpuReading.hung_call``), the
other GPUs are read as usual, and the GPU is read again once the call returns. A C call cannot be
interrupted, so the thread stays parked in it; nothing more is sent to that thread until it comes back.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import pynvml

from exporter.nvml.health import CallHealth, error_code_name
from exporter.nvml.workers import CallHungError, Workers
from exporter.readings import GpmReading, GpuReading, MigReading, NodeReading, ProcessReading

log = logging.getLogger("gpuattr.nvml")
T = TypeVar("T")

_GPM_METRICS = (
    pynvml.NVML_GPM_METRIC_SM_UTIL,
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
    pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL,
)
_GPM_MIN_INTERVAL_S = 0.1  # NVML needs samples at least 100 ms apart
_NO_INSTANCE = 0xFFFFFFFF
_ALL_LINKS = 0xFFFFFFFF  # a field's scopeId that sums an NVLink counter over every link
_FIELDS_CALL = "nvmlDeviceGetFieldValues"
_MEMORY_TEMP = pynvml.NVML_FI_DEV_MEMORY_TEMP
_LINK_COUNT = pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT
_NVLINK_TX, _NVLINK_RX = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
_FIELD_NAMES = {
    _MEMORY_TEMP: "NVML_FI_DEV_MEMORY_TEMP",
    _LINK_COUNT: "NVML_FI_DEV_NVLINK_LINK_COUNT",
    _NVLINK_TX: "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX",
    _NVLINK_RX: "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX",
}
_XID_EVENTS_PER_SAMPLE = 64  # drained per GPU and sample; more wait for the next sample
_XID_WAIT = "nvmlEventSetWait_v2"


class _ProcessInfoV1(ctypes.Structure):
    """``nvmlProcessInfo_v1_t`` from the NVML header, for drivers that offer only the unversioned call."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class GpuLostError(Exception):
    """Raised inside a device read when NVML answers GpuIsLost; the device is marked down."""


class NvmlDownError(Exception):
    """NVML answered Uninitialized/DriverNotLoaded mid-run; re-initialise on the next sample."""


@dataclass
class _GpmState:
    sample: Any = None  # c_nvmlGpmSample_t of the previous sample
    taken_at: float = 0.0  # monotonic seconds


@dataclass
class _Device:
    index: int
    handle: Any
    uuid: str
    name: str
    gpm_supported: bool
    last_seen_us: int = 0  # largest per-process utilisation timestamp seen (CPU µs)
    util_call: str | None = None  # which per-process utilisation call this driver answers
    process_call: str | None = None  # which running-processes call this driver answers
    gpm: dict[int | None, _GpmState] = field(default_factory=dict)  # by GPU-instance id (None = device)
    was_lost: bool = False
    nvlink: bool | None = None  # the GPU has NVLink links; None until the driver said
    xid_events: Any = None  # the NVML event set XID errors of this GPU arrive on; None: not created yet
    xid_known: bool = False  # the driver accepted the registration for XID events
    xid_counts: dict[int, int] = field(default_factory=dict)  # XID code -> events seen since start
    last_xid: int | None = None
    xid_seen: tuple[tuple[int, int], ...] = ()  # xid_counts as of the last drain, safe to read from any thread


def _field_value(fv: Any) -> float:
    """The number in an ``nvmlFieldValue_t``, by its value type."""
    kind = int(fv.valueType)
    if kind == pynvml.NVML_VALUE_TYPE_DOUBLE:
        return float(fv.value.dVal)
    member = {
        pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
    }.get(kind, "ullVal")
    return float(getattr(fv.value, member))


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlReader:
    """Reads devices, MIG instances, processes and activity through NVML."""

    def __init__(
        self,
        health: CallHealth | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        use_gpm: bool = True,
        pcie_throughput: bool = True,
        interval_s: float = 5.0,
        call_timeout_s: float = 2.0,
    ) -> None:
        self.health = health or CallHealth()
        self.call_timeout_s = call_timeout_s
        self.wall_clock = wall_clock
        self.monotonic = monotonic
        self.use_gpm = use_gpm
        self.pcie_throughput = pcie_throughput
        """Ask nvmlDeviceGetPcieThroughput (about 20 ms per direction on a real driver, on each GPU's thread)."""
        self.interval_s = interval_s
        self.initialized = False
        self.driver_version = ""
        self.clamped_total = 0
        self._devices: list[_Device] = []
        self._init_logged: str | None = None
        self.workers: Workers[int | None] = Workers(_thread_name)
        """The thread of each GPU (by index) and of the node (None) that the NVML calls run on."""
        self._count_lock = threading.Lock()

    @property
    def worker_cpu_seconds_total(self) -> float:
        """CPU time the NVML worker threads spent; the sampler adds it to its own."""
        return self.workers.cpu_seconds_total

    # -- lifecycle --------------------------------------------------------------------------------------
    def ensure_initialized(self) -> bool:
        if self.initialized:
            return True
        self._entering("nvmlInit")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            code = error_code_name(exc)
            self.health.failed("nvmlInit", "node", exc)
            if self._init_logged != code:
                log.warning("NVML is not available (%s); serving without GPU data and retrying", code)
                self._init_logged = code
            return False
        self.initialized = True
        self._init_logged = None
        self.health.ok("nvmlInit", "node")
        self.driver_version = self._call("nvmlSystemGetDriverVersion", "node", pynvml.nvmlSystemGetDriverVersion) or ""
        self._devices = self._enumerate()
        log.info("NVML initialised: driver %s, %d GPU(s)", self.driver_version, len(self._devices))
        return True

    def shutdown(self) -> None:
        stuck = set(self.workers.shutdown())  # the threads end; a parked one once its call returns
        parked = [dev.uuid for dev in self._devices if dev.index in stuck]
        for dev in self._devices:
            if dev.index in stuck:
                continue  # its thread is inside a call that hangs: leave its state alone
            try:
                self._free_gpm(dev)
                self._free_events(dev)
            except NvmlDownError:  # the library is already gone: nothing left to free
                dev.gpm.clear()
        if None in stuck:
            parked.append("node")
        if self.initialized and not parked:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:  # pragma: no cover - best effort on exit
                log.debug("nvmlShutdown: %s", exc)
        elif parked:
            log.warning("leaving NVML initialised: a call on %s has not returned", ", ".join(parked))
        self.initialized = False
        self._devices = []

    def _enumerate(self) -> list[_Device]:
        count = self._call("nvmlDeviceGetCount", "node", pynvml.nvmlDeviceGetCount) or 0
        devices = []
        for index in range(count):
            handle = self._call("nvmlDeviceGetHandleByIndex", "node", pynvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            scope = f"gpu{index}"
            try:
                uuid = _text(self._call_raw("nvmlDeviceGetUUID", scope, pynvml.nvmlDeviceGetUUID, handle) or scope)
                name = _text(self._call_raw("nvmlDeviceGetName", uuid, pynvml.nvmlDeviceGetName, handle) or "")
                gpm = False
                if self.use_gpm:
                    support = self._call_raw(
                        "nvmlGpmQueryDeviceSupport", uuid, pynvml.nvmlGpmQueryDeviceSupport, handle
                    )
                    gpm = bool(support is not None and support.isSupportedDevice)
            except GpuLostError:
                uuid, name, gpm = scope, "", False
            devices.append(_Device(index, handle, uuid, name, gpm))
        return devices

    # -- the call wrapper --------------------------------------------------------------------------------
    def _call_raw(self, call: str, scope: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Run one NVML call; None when it failed or is not supported. GpuIsLost raises GpuLostError."""
        if self.health.unsupported(call, scope):
            return None
        self._entering(call)
        try:
            result = fn(*args)
        except pynvml.NVMLError_GpuIsLost as exc:
            self.health.failed(call, scope, exc)
            raise GpuLostError(scope) from exc
        except (pynvml.NVMLError_Uninitialized, pynvml.NVMLError_DriverNotLoaded) as exc:
            self.health.failed(call, scope, exc)
            raise NvmlDownError(call) from exc
        except pynvml.NVMLError as exc:
            self.health.failed(call, scope, exc)
            return None
        self.health.ok(call, scope)
        return result

    def _call(self, call: str, scope: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return self._call_raw(call, scope, fn, *args)
        except GpuLostError:
            return None

    # -- sampling -------------------------------------------------------------------------------------------
    def read(self) -> NodeReading:
        """One sample of the whole node, never waiting on NVML longer than ``call_timeout_s``."""
        now = self.wall_clock()
        deadline = time.monotonic() + self.call_timeout_s
        if not self.initialized:
            self._came_back(None, "node")
            try:  # refused while nvmlInit from an earlier sample has not returned
                started = self.workers.submit(None, self.ensure_initialized)
                if not self.workers.wait(None, started, deadline):
                    return self._down(now)
            except CallHungError as hung:
                self._hung(hung, "node", None)
                return self._down(now)

        futures: dict[int, Future[GpuReading]] = {}
        readings: dict[int, GpuReading] = {}
        for dev in self._devices:
            self._came_back(dev.index, dev.uuid)
            try:
                futures[dev.index] = self.workers.submit(dev.index, partial(self._read_device, dev))
            except CallHungError as hung:  # still inside the call that hung at an earlier sample
                readings[dev.index] = self._hung_reading(dev, hung)
        driver_gone = False
        for dev in self._devices:
            if (future := futures.get(dev.index)) is None:
                continue
            try:
                readings[dev.index] = self.workers.wait(dev.index, future, deadline)
            except CallHungError as hung:
                readings[dev.index] = self._hung_reading(dev, hung)
            except NvmlDownError:
                driver_gone = True
        if driver_gone:
            log.warning("NVML stopped answering; re-initialising on the next sample")
            self.initialized = False
            for dev in self._devices:
                dev.gpm.clear()
                self.workers.forget(dev.index)  # a parked thread ends once its call returns
            self._devices = []
            return self._down(now)
        gpus = tuple(readings[dev.index] for dev in self._devices)
        return NodeReading(
            True,
            self.driver_version,
            now,
            gpus,
            self.health.snapshot(),
            self.clamped_total,
            hung_call=self.workers.hung_call(None),
        )

    def _down(self, now: float) -> NodeReading:
        return NodeReading(
            False,
            self.driver_version,
            now,
            errors=self.health.snapshot(),
            clamped_total=self.clamped_total,
            hung_call=self.workers.hung_call(None),
        )

    # -- calls that hang -----------------------------------------------------------------------------------
    def _entering(self, call: str) -> None:
        """Note which NVML function this worker thread is about to be inside."""
        self.workers.entering(call)

    def _hung(self, hung: CallHungError, scope: str, dev: _Device | None) -> str:
        """Count and log a hang the first time it is noticed; the call that hangs."""
        call = hung.call
        if hung.first:
            self.health.timed_out(call, scope)
            where = f"GPU {dev.index} ({dev.uuid})" if dev is not None else "the node"
            log.error(
                "NVML %s on %s has not returned within %.1f s; %s until it does",
                call,
                where,
                self.call_timeout_s,
                "reading the other GPUs and skipping this one" if dev is not None else "serving without NVML",
            )
        return call

    def _came_back(self, key: int | None, scope: str) -> None:
        if self.workers.reclaim(key):
            log.info("the NVML call that hung on %s has returned; reading it again", scope)

    def _hung_reading(self, dev: _Device, hung: CallHungError) -> GpuReading:
        call = self._hung(hung, dev.uuid, dev)
        return GpuReading(dev.index, dev.uuid, dev.name, up=False, hung_call=call, **_xid_fields(dev))

    def _read_device(self, dev: _Device) -> GpuReading:
        self._drain_xid(dev)  # first: the XID that comes with a GPU falling off the bus is still counted
        try:
            reading = self._read_device_or_raise(dev)
        except GpuLostError:
            if not dev.was_lost:
                log.error("GPU %d (%s) fell off the bus (GpuIsLost); other GPUs are still read", dev.index, dev.uuid)
            dev.was_lost = True
            dev.gpm.clear()  # its GPM samples are meaningless now; the driver frees them with the device
            dev.last_seen_us = 0
            return GpuReading(dev.index, dev.uuid, dev.name, up=False, **_xid_fields(dev))
        if dev.was_lost:
            log.info("GPU %d (%s) answers again", dev.index, dev.uuid)
            dev.was_lost = False
            self.health.forget_scope(dev.uuid)
        return reading

    def _read_device_or_raise(self, dev: _Device) -> GpuReading:
        h, scope = dev.handle, dev.uuid
        mem = self._call_raw("nvmlDeviceGetMemoryInfo", scope, pynvml.nvmlDeviceGetMemoryInfo, h)
        mig_mode_pair = self._call_raw("nvmlDeviceGetMigMode", scope, pynvml.nvmlDeviceGetMigMode, h)
        mig_mode = bool(mig_mode_pair and mig_mode_pair[0])
        util = (
            None
            if mig_mode
            else self._call_raw("nvmlDeviceGetUtilizationRates", scope, pynvml.nvmlDeviceGetUtilizationRates, h)
        )
        power_mw = self._call_raw("nvmlDeviceGetPowerUsage", scope, pynvml.nvmlDeviceGetPowerUsage, h)
        energy_mj = self._call_raw(
            "nvmlDeviceGetTotalEnergyConsumption", scope, pynvml.nvmlDeviceGetTotalEnergyConsumption, h
        )
        temp = self._call_raw(
            "nvmlDeviceGetTemperature", scope, pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU
        )
        health = self._read_health(dev)

        mig: tuple[MigReading, ...] = ()
        processes: tuple[ProcessReading, ...] = ()
        roles: dict[int, str] = {}
        activity_known = False
        gpm = None
        if mig_mode:
            mig = self._read_mig(dev)
        else:
            procs = self._running_processes(dev, h, scope)
            roles = self._mps_roles(h, scope, procs)
            activity = self._process_activity(dev)
            activity_known = activity is not None
            processes = tuple(
                ProcessReading(
                    pid,
                    used,
                    (activity or {}).get(pid, (0.0, 0.0))[0] if activity is not None else None,
                    (activity or {}).get(pid, (0.0, 0.0))[1] if activity is not None else None,
                    role=roles.get(pid, ""),
                )
                for pid, (used, _gi) in sorted(procs.items())
            )
            gpm = self._gpm(dev, None)
        return GpuReading(
            index=dev.index,
            uuid=dev.uuid,
            name=dev.name,
            up=True,
            mig_mode=mig_mode,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            utilization_ratio=util.gpu / 100.0 if util is not None else None,
            memory_controller_ratio=util.memory / 100.0 if util is not None else None,
            power_watts=power_mw / 1000.0 if power_mw is not None else None,
            energy_joules=energy_mj / 1000.0 if energy_mj is not None else None,
            temperature_celsius=float(temp) if temp is not None else None,
            **health,
            **_xid_fields(dev),
            gpm=gpm,
            mig=mig,
            processes=processes,
            process_activity_known=activity_known,
            mps="mps_server" in roles.values() if not mig_mode else False,
        )

    # -- device health --------------------------------------------------------------------------------
    def _read_health(self, dev: _Device) -> dict[str, Any]:
        """Clocks, memory temperature, codecs, reserved memory, PCIe, NVLink and row remapping of one GPU.

        Each value the driver does not give (NOT_SUPPORTED, N/A, a failure) stays None: unknown, never 0.
        ``nvmlDeviceGetPcieThroughput`` samples the link for about 20 ms per direction on a real driver: it is
        asked only when ``pcie_throughput`` is on (``--dcgm-compat``, its only user).
        """
        h, scope = dev.handle, dev.uuid
        out: dict[str, Any] = {}
        sm = self._call_raw("nvmlDeviceGetClockInfo", scope, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
        mem = self._call_raw("nvmlDeviceGetClockInfo", scope, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM)
        out["sm_clock_mhz"] = float(sm) if sm is not None else None
        out["memory_clock_mhz"] = float(mem) if mem is not None else None
        for key, call, fn in (
            ("encoder_ratio", "nvmlDeviceGetEncoderUtilization", pynvml.nvmlDeviceGetEncoderUtilization),
            ("decoder_ratio", "nvmlDeviceGetDecoderUtilization", pynvml.nvmlDeviceGetDecoderUtilization),
        ):
            codec = self._call_raw(call, scope, fn, h)
            out[key] = min(1.0, codec[0] / 100.0) if codec is not None else None
        memory = self._call_raw(
            "nvmlDeviceGetMemoryInfo_v2", scope, pynvml.nvmlDeviceGetMemoryInfo, h, pynvml.nvmlMemory_v2
        )
        out["memory_reserved_bytes"] = int(memory.reserved) if memory is not None else None
        replays = self._call_raw("nvmlDeviceGetPcieReplayCounter", scope, pynvml.nvmlDeviceGetPcieReplayCounter, h)
        out["pcie_replays_total"] = int(replays) if replays is not None else None
        for key, counter in (
            ("pcie_tx_bytes_per_second", pynvml.NVML_PCIE_UTIL_TX_BYTES),
            ("pcie_rx_bytes_per_second", pynvml.NVML_PCIE_UTIL_RX_BYTES),
        ):
            if not self.pcie_throughput:
                out[key] = None  # not asked: unknown, as for a driver that does not say
                continue
            kb = self._call_raw("nvmlDeviceGetPcieThroughput", scope, pynvml.nvmlDeviceGetPcieThroughput, h, counter)
            out[key] = kb * 1024.0 if kb is not None else None
        rows = self._call_raw("nvmlDeviceGetRemappedRows", scope, pynvml.nvmlDeviceGetRemappedRows, h)
        if rows is not None:
            correctable, uncorrectable, pending, failed = rows
            out["remapped_rows_correctable"], out["remapped_rows_uncorrectable"] = int(correctable), int(uncorrectable)
            out["remapped_rows_pending"], out["row_remap_failed"] = bool(pending), bool(failed)
        out.update(self._read_fields(dev))
        return out

    def _read_fields(self, dev: _Device) -> dict[str, Any]:
        """Memory temperature and NVLink traffic through one nvmlDeviceGetFieldValues call.

        Each field carries its own return code; a field the GPU does not support is counted and logged once
        under ``nvmlDeviceGetFieldValues(<field>)`` and not asked again. NVLink traffic is None on a GPU
        without NVLink links (PCIe cards).
        """
        scope = dev.uuid
        wanted: list[tuple[int, int]] = []
        if not self.health.unsupported(_field_call(_MEMORY_TEMP), scope):
            wanted.append((_MEMORY_TEMP, 0))
        if dev.nvlink is None:
            wanted.append((_LINK_COUNT, 0))
        if dev.nvlink is not False:
            wanted += [(_NVLINK_TX, _ALL_LINKS), (_NVLINK_RX, _ALL_LINKS)]
        if not wanted:
            return {}
        values = self._call_raw(_FIELDS_CALL, scope, pynvml.nvmlDeviceGetFieldValues, dev.handle, wanted)
        if values is None:
            return {}
        got: dict[int, float] = {}
        for i, (field_id, _scope_id) in enumerate(wanted):
            fv = values[i]
            call = _field_call(field_id)
            if int(fv.nvmlReturn) != pynvml.NVML_SUCCESS:
                self.health.failed(call, scope, pynvml.NVMLError(int(fv.nvmlReturn)))
                continue
            self.health.ok(call, scope)
            got[field_id] = _field_value(fv)
        if dev.nvlink is None:
            dev.nvlink = got.get(_LINK_COUNT, 0) > 0  # no answer or no links: a GPU without NVLink
        out: dict[str, Any] = {}
        if _MEMORY_TEMP in got:
            out["memory_temperature_celsius"] = got[_MEMORY_TEMP]
        if dev.nvlink and _NVLINK_TX in got and _NVLINK_RX in got:
            out["nvlink_bytes_total"] = int(got[_NVLINK_TX] + got[_NVLINK_RX]) * 1024  # the driver counts KiB
        return out

    def _drain_xid(self, dev: _Device) -> None:
        """Count the XID errors NVML raised for this GPU since the last sample, never waiting for one.

        The GPU's event set is created and registered for ``nvmlEventTypeXidCriticalError`` on its first read;
        a driver that cannot deliver them leaves the counts unknown (``xid_events_known`` false). A wait that
        times out means no event.
        """
        scope = dev.uuid
        if dev.xid_events is None:
            if self.health.unsupported("nvmlDeviceRegisterEvents", scope):
                return
            events = self._call("nvmlEventSetCreate", scope, pynvml.nvmlEventSetCreate)
            if events is None:
                return
            registered = self._call_raw(
                "nvmlDeviceRegisterEvents",
                scope,
                _register_events,
                dev.handle,
                pynvml.nvmlEventTypeXidCriticalError,
                events,
            )
            if registered is None:
                self._call("nvmlEventSetFree", scope, pynvml.nvmlEventSetFree, events)
                return
            dev.xid_events, dev.xid_known = events, True
        if self.health.unsupported(_XID_WAIT, scope):
            return  # the driver said once it cannot wait on events here: the counts stay unknown
        for _ in range(_XID_EVENTS_PER_SAMPLE):
            self._entering(_XID_WAIT)
            try:
                data = pynvml.nvmlEventSetWait_v2(dev.xid_events, 0)
            except pynvml.NVMLError_Timeout:
                self.health.ok(_XID_WAIT, scope)
                break
            except (pynvml.NVMLError_Uninitialized, pynvml.NVMLError_DriverNotLoaded) as exc:
                self.health.failed(_XID_WAIT, scope, exc)
                raise NvmlDownError(_XID_WAIT) from exc
            except pynvml.NVMLError as exc:
                self.health.failed(_XID_WAIT, scope, exc)
                if self.health.unsupported(_XID_WAIT, scope):
                    dev.xid_known = False
                break
            self.health.ok(_XID_WAIT, scope)
            if int(data.eventType) & pynvml.nvmlEventTypeXidCriticalError:
                code = int(data.eventData)
                seen = dev.xid_counts.get(code, 0)
                dev.xid_counts[code] = seen + 1
                dev.last_xid = code
                if not seen:  # a workload that faults in a loop raises the same XID thousands of times
                    log.warning("GPU %d (%s) reported XID %d; the next ones are counted only", dev.index, scope, code)
        dev.xid_seen = tuple(sorted(dev.xid_counts.items()))

    def _free_events(self, dev: _Device) -> None:
        if dev.xid_events is not None:
            self._call("nvmlEventSetFree", dev.uuid, pynvml.nvmlEventSetFree, dev.xid_events)
            dev.xid_events = None

    # -- processes --------------------------------------------------------------------------------------
    def _running_processes(self, dev: _Device, handle: Any, scope: str) -> dict[int, tuple[int | None, int | None]]:
        """pid -> (used bytes, GPU-instance id), probing the v3, v2 and v1 process-info calls."""
        found: dict[int, tuple[int | None, int | None]] = {}
        calls: list[tuple[str, Callable[[Any], list[Any]]]] = [
            ("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.nvmlDeviceGetComputeRunningProcesses_v3),
            ("nvmlDeviceGetComputeRunningProcesses_v2", pynvml.nvmlDeviceGetComputeRunningProcesses_v2),
            ("nvmlDeviceGetComputeRunningProcesses", _compute_processes_v1),
        ]
        if dev.process_call:
            calls = [c for c in calls if c[0] == dev.process_call]
        for name, fn in calls:
            if self.health.unsupported(name, scope):
                continue
            procs = self._call_raw(name, scope, fn, handle)
            if procs is None:
                continue
            dev.process_call = name
            for p in procs:
                gi = getattr(p, "gpuInstanceId", None)
                found[int(p.pid)] = (
                    int(p.usedGpuMemory) if p.usedGpuMemory is not None else None,
                    None if gi in (None, _NO_INSTANCE) else int(gi),
                )
            break
        graphics = self._call_raw(
            "nvmlDeviceGetGraphicsRunningProcesses_v3",
            scope,
            pynvml.nvmlDeviceGetGraphicsRunningProcesses_v3,
            handle,
        )
        for p in graphics or ():
            used = int(p.usedGpuMemory) if p.usedGpuMemory is not None else None
            prev = found.get(int(p.pid))
            if prev is None or (used or 0) > (prev[0] or 0):
                found[int(p.pid)] = (used, prev[1] if prev else None)
        return found

    def _mps_roles(self, handle: Any, scope: str, procs: Mapping[int, object]) -> dict[int, str]:
        """pid -> ``mps_client`` or ``mps_server`` on a GPU shared through MPS; empty otherwise.

        The clients are what nvmlDeviceGetMPSComputeRunningProcesses lists; the server is the process the
        compute list adds beside them whose name is ``nvidia-cuda-mps-server`` (``/proc/<pid>/comm`` cuts it
        to ``nvidia-cuda-mps``). A driver without the MPS call, or a GPU without clients, gives no roles.
        """
        name = "nvmlDeviceGetMPSComputeRunningProcesses_v3"
        if not procs or self.health.unsupported(name, scope):
            return {}
        listed = self._call_raw(name, scope, pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v3, handle)
        clients = {int(p.pid) for p in listed or ()}
        if not clients:
            return {}
        roles = dict.fromkeys(clients & set(procs), "mps_client")
        for pid in set(procs) - clients:
            process_name = self._call_raw("nvmlSystemGetProcessName", scope, pynvml.nvmlSystemGetProcessName, pid)
            if process_name is not None and _text(process_name).rsplit("/", 1)[-1].startswith("nvidia-cuda-mps"):
                roles[pid] = "mps_server"
        return roles

    def _process_activity(self, dev: _Device) -> dict[int, tuple[float, float]] | None:
        """pid -> (sm, mem) ratios since the last sample; None when the driver cannot tell.

        NOT_FOUND means no process ran anything since the last-seen timestamp: every process idle.
        """
        scope = dev.uuid
        if dev.last_seen_us == 0:
            dev.last_seen_us = int((self.wall_clock() - self.interval_s) * 1e6)
        calls: list[tuple[str, Callable[[Any, int], list[Any]]]] = [
            ("nvmlDeviceGetProcessesUtilizationInfo", pynvml.nvmlDeviceGetProcessesUtilizationInfo),
            ("nvmlDeviceGetProcessUtilization", pynvml.nvmlDeviceGetProcessUtilization),
        ]
        if dev.util_call:
            calls = [c for c in calls if c[0] == dev.util_call]
        for name, fn in calls:
            if self.health.unsupported(name, scope):
                continue
            asked_at_us = int(self.wall_clock() * 1e6)
            self._entering(name)
            try:
                samples = fn(dev.handle, dev.last_seen_us)
            except pynvml.NVMLError_NotFound:
                dev.util_call = name
                self.health.ok(name, scope)
                dev.last_seen_us = max(dev.last_seen_us, asked_at_us)  # nothing ran up to now: start after it
                return {}
            except pynvml.NVMLError_GpuIsLost as exc:
                self.health.failed(name, scope, exc)
                raise GpuLostError(scope) from exc
            except pynvml.NVMLError as exc:
                self.health.failed(name, scope, exc)
                if self.health.unsupported(name, scope):
                    continue
                return None
            self.health.ok(name, scope)
            dev.util_call = name
            return self._fold_samples(dev, samples)
        return None

    def _fold_samples(self, dev: _Device, samples: list[Any]) -> dict[int, tuple[float, float]]:
        """Average duplicate samples per PID, clamp values above 100 %, advance the last-seen stamp."""
        sums: dict[int, list[float]] = {}
        newest = dev.last_seen_us
        for s in samples:
            stamp = int(s.timeStamp)
            if stamp <= dev.last_seen_us:
                continue  # older than what we already covered
            newest = max(newest, stamp)
            sm, mem = int(s.smUtil), int(s.memUtil)
            if sm > 100 or mem > 100:
                with self._count_lock:
                    self.clamped_total += 1
                sm, mem = min(sm, 100), min(mem, 100)
            acc = sums.setdefault(int(s.pid), [0.0, 0.0, 0.0])
            acc[0] += sm
            acc[1] += mem
            acc[2] += 1
        dev.last_seen_us = newest
        return {pid: (a[0] / a[2] / 100.0, a[1] / a[2] / 100.0) for pid, a in sums.items()}

    # -- MIG ----------------------------------------------------------------------------------------------
    def _read_mig(self, dev: _Device) -> tuple[MigReading, ...]:
        scope = dev.uuid
        count = (
            self._call_raw("nvmlDeviceGetMaxMigDeviceCount", scope, pynvml.nvmlDeviceGetMaxMigDeviceCount, dev.handle)
            or 0
        )
        out = []
        for i in range(count):
            self._entering("nvmlDeviceGetMigDeviceHandleByIndex")
            try:
                mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(dev.handle, i)
            except pynvml.NVMLError_NotFound:
                continue  # no instance in this slot
            except pynvml.NVMLError_GpuIsLost as exc:
                raise GpuLostError(scope) from exc
            except pynvml.NVMLError as exc:
                self.health.failed("nvmlDeviceGetMigDeviceHandleByIndex", scope, exc)
                continue
            gi = self._call_raw("nvmlDeviceGetGpuInstanceId", scope, pynvml.nvmlDeviceGetGpuInstanceId, mh)
            if gi is None:
                continue
            ci = self._call_raw("nvmlDeviceGetComputeInstanceId", scope, pynvml.nvmlDeviceGetComputeInstanceId, mh)
            uuid = _text(self._call_raw("nvmlDeviceGetUUID", scope, pynvml.nvmlDeviceGetUUID, mh) or "")
            name = _text(self._call_raw("nvmlDeviceGetName", scope, pynvml.nvmlDeviceGetName, mh) or "")
            mem = self._call_raw("nvmlDeviceGetMemoryInfo", scope, pynvml.nvmlDeviceGetMemoryInfo, mh)
            procs = self._running_processes(dev, mh, scope)
            out.append(
                MigReading(
                    gpu_instance=int(gi),
                    compute_instance=int(ci) if ci is not None else None,
                    uuid=uuid,
                    profile=name.rsplit(" MIG ", 1)[1] if " MIG " in name else "",
                    memory_total_bytes=int(mem.total) if mem is not None else None,
                    memory_used_bytes=int(mem.used) if mem is not None else None,
                    gpm=self._gpm(dev, int(gi)),
                    processes=tuple(
                        ProcessReading(pid, used, None, None, int(gi)) for pid, (used, _g) in sorted(procs.items())
                    ),
                )
            )
        return tuple(out)

    # -- GPM ------------------------------------------------------------------------------------------------
    def _gpm(self, dev: _Device, gpu_instance: int | None) -> GpmReading | None:
        """Activity between the previous GPM sample and one taken now; None on the first sample."""
        if not dev.gpm_supported:
            return None
        scope = dev.uuid
        call = "nvmlGpmSampleGet" if gpu_instance is None else "nvmlGpmMigSampleGet"
        if self.health.unsupported(call, scope):
            return None
        state = dev.gpm.setdefault(gpu_instance, _GpmState())
        now = self.monotonic()
        if state.sample is not None and now - state.taken_at < _GPM_MIN_INTERVAL_S:
            return None
        sample = self._call_raw("nvmlGpmSampleAlloc", scope, pynvml.nvmlGpmSampleAlloc)
        if sample is None:
            return None
        if gpu_instance is None:
            taken = self._call_raw(call, scope, pynvml.nvmlGpmSampleGet, dev.handle, sample)
        else:
            taken = self._call_raw(call, scope, pynvml.nvmlGpmMigSampleGet, dev.handle, gpu_instance, sample)
        if taken is None:
            self._call("nvmlGpmSampleFree", scope, pynvml.nvmlGpmSampleFree, sample)
            return None
        previous, state.sample, state.taken_at = state.sample, sample, now
        if previous is None:
            return None
        try:
            request = pynvml.c_nvmlGpmMetricsGet_t()
            request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = len(_GPM_METRICS)
            request.sample1, request.sample2 = previous, sample
            for i, metric_id in enumerate(_GPM_METRICS):
                request.metrics[i].metricId = metric_id
            result = self._call_raw("nvmlGpmMetricsGet", scope, pynvml.nvmlGpmMetricsGet, request)
        finally:
            self._call("nvmlGpmSampleFree", scope, pynvml.nvmlGpmSampleFree, previous)
        if result is None:
            return None
        values: dict[int, float | None] = {}
        for i, metric_id in enumerate(_GPM_METRICS):
            m = result.metrics[i]
            ok = m.nvmlReturn == pynvml.NVML_SUCCESS
            values[metric_id] = min(1.0, max(0.0, m.value / 100.0)) if ok else None
        return GpmReading(
            sm_active=values[pynvml.NVML_GPM_METRIC_SM_UTIL],
            sm_occupancy=values[pynvml.NVML_GPM_METRIC_SM_OCCUPANCY],
            tensor_active=values[pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL],
            dram_bandwidth=values[pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL],
            graphics_active=values[pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL],
        )

    def _free_gpm(self, dev: _Device) -> None:
        for state in dev.gpm.values():
            if state.sample is not None:
                self._call("nvmlGpmSampleFree", dev.uuid, pynvml.nvmlGpmSampleFree, state.sample)
        dev.gpm.clear()

    def process_name(self, pid: int) -> str | None:
        """The command name NVML knows for a PID; None when the process is gone or NVML does not answer."""

        def ask() -> str | None:
            self._entering("nvmlSystemGetProcessName")
            try:
                return _text(pynvml.nvmlSystemGetProcessName(pid))
            except pynvml.NVMLError:
                return None

        try:
            asked = self.workers.submit(None, ask)
        except CallHungError:  # a node-level call has not returned
            return None
        try:
            return self.workers.wait(None, asked, time.monotonic() + self.call_timeout_s)
        except CallHungError as hung:
            self._hung(hung, "node", None)
            return None


def _field_call(field_id: int) -> str:
    """The name a field's outcome is counted under: ``nvmlDeviceGetFieldValues(NVML_FI_DEV_MEMORY_TEMP)``."""
    return f"{_FIELDS_CALL}({_FIELD_NAMES.get(field_id, field_id)})"


def _register_events(handle: Any, event_types: int, events: Any) -> bool:
    pynvml.nvmlDeviceRegisterEvents(handle, event_types, events)
    return True  # the binding returns None on success, which the call wrapper reads as a failure


def _xid_fields(dev: _Device) -> dict[str, Any]:
    """The XID part of a reading, from what the GPU's thread last drained (safe while it is stuck)."""
    seen = dev.xid_seen
    return {
        "last_xid": dev.last_xid,
        "xid_errors_total": sum(n for _code, n in seen),
        "xid_counts": seen,
        "xid_events_known": dev.xid_known,
    }


def _thread_name(key: int | None) -> str:
    return "nvml-node" if key is None else f"nvml-gpu{key}"


def _compute_processes_v1(handle: Any) -> list[Any]:
    """The unversioned ``nvmlDeviceGetComputeRunningProcesses`` C call with the v1 struct layout."""
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses")
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == pynvml.NVML_SUCCESS:
        return []
    if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
        raise pynvml.NVMLError(ret)
    count.value = count.value * 2 + 5
    infos = (_ProcessInfoV1 * count.value)()
    ret = fn(handle, ctypes.byref(count), infos)
    if ret != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(ret)
    out = []
    for i in range(count.value):
        used = int(infos[i].usedGpuMemory)
        out.append(
            pynvml.nvmlFriendlyObject({"pid": int(infos[i].pid), "usedGpuMemory": None if used == 2**64 - 1 else used})
        )
    return out
