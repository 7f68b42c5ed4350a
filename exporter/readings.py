"""What one sample of a node holds, before attribution. Units are in the field names or comments."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DcgmKey:
    """Which device a dcgm-exporter value belongs to."""

    gpu_uuid: str
    gpu_instance: str  # MIG GPU-instance id as text; "" for the whole GPU


@dataclass(frozen=True)
class ProcessReading:
    pid: int  # host PID, as NVML reports it
    memory_bytes: int | None  # usedGpuMemory; None when the driver cannot tell (N/A)
    sm_ratio: float | None  # 0..1, fraction of the interval its kernels ran; None when unknown
    mem_ratio: float | None  # 0..1, fraction of the interval the memory controller served it
    gpu_instance: int | None = None  # MIG GPU-instance id
    role: str = ""
    """``mps_server`` (nvidia-cuda-mps-server: NVML credits every MPS client's activity to it), ``mps_client``
    (listed by nvmlDeviceGetMPSComputeRunningProcesses; memory right, no activity samples of its own), or ""."""


@dataclass(frozen=True)
class GpmReading:
    """Device or MIG-instance activity over the last interval, each 0..1, from NVML GPM."""

    sm_active: float | None
    sm_occupancy: float | None
    tensor_active: float | None
    dram_bandwidth: float | None
    graphics_active: float | None = None  # NVML_GPM_METRIC_GRAPHICS_UTIL / 100 (DCGM's GR_ENGINE_ACTIVE)


@dataclass(frozen=True)
class MigReading:
    gpu_instance: int
    compute_instance: int | None
    uuid: str
    profile: str  # e.g. "3g.40gb"
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    gpm: GpmReading | None
    processes: tuple[ProcessReading, ...]


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    up: bool
    mig_mode: bool = False
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    utilization_ratio: float | None = None  # nvidia-smi utilization.gpu / 100
    memory_controller_ratio: float | None = None  # nvidia-smi utilization.memory / 100
    power_watts: float | None = None
    energy_joules: float | None = None
    temperature_celsius: float | None = None
    # Device health and the rest of dcgm-exporter's default counters; None where the driver gives nothing.
    memory_temperature_celsius: float | None = None  # HBM temperature (NVML_FI_DEV_MEMORY_TEMP)
    sm_clock_mhz: float | None = None  # nvmlDeviceGetClockInfo(NVML_CLOCK_SM)
    memory_clock_mhz: float | None = None  # nvmlDeviceGetClockInfo(NVML_CLOCK_MEM)
    encoder_ratio: float | None = None  # nvmlDeviceGetEncoderUtilization / 100
    decoder_ratio: float | None = None  # nvmlDeviceGetDecoderUtilization / 100
    memory_reserved_bytes: int | None = None  # nvmlDeviceGetMemoryInfo_v2 .reserved (driver/firmware)
    pcie_replays_total: int | None = None  # nvmlDeviceGetPcieReplayCounter, since driver load
    pcie_tx_bytes_per_second: float | None = None  # nvmlDeviceGetPcieThroughput(TX), KB/s * 1024
    pcie_rx_bytes_per_second: float | None = None  # nvmlDeviceGetPcieThroughput(RX), KB/s * 1024
    nvlink_bytes_total: int | None = None  # NVLink traffic, all links, tx+rx, since driver load; None: no NVLink
    remapped_rows_correctable: int | None = None  # nvmlDeviceGetRemappedRows
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None  # a remap waits for the next GPU reset
    row_remap_failed: bool | None = None
    last_xid: int | None = None  # the last XID error seen (nvmlEventSetWait), None: none since start
    xid_errors_total: int = 0  # XID errors seen since the agent started, all codes
    xid_counts: tuple[tuple[int, int], ...] = ()  # (xid, count) since the agent started
    xid_events_known: bool = False  # the driver delivers XID events for this GPU: the counts above are real
    gpm: GpmReading | None = None
    mig: tuple[MigReading, ...] = ()
    processes: tuple[ProcessReading, ...] = ()  # on a MIG GPU: empty; processes live in each MigReading
    process_activity_known: bool = False  # per-process sm/mem came from NVML this interval
    mps: bool = False  # an MPS server runs here and serves the clients marked in ``processes``
    hung_call: str | None = None  # the NVML function this GPU's read is stuck in (then up is False)


@dataclass(frozen=True)
class NodeReading:
    nvml_up: bool
    driver_version: str
    timestamp: float  # unix seconds at which the sample was taken
    gpus: tuple[GpuReading, ...] = ()
    errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (call, code) -> count
    clamped_total: int = 0
    hung_call: str | None = None  # a node-level NVML call (nvmlInit…) that has not returned
