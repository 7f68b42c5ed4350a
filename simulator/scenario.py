"""Scenario files: one YAML description of a simulated GPU node.

The same file drives the fake NVML (GPUs, MIG layout, processes, faults), the fake ``/proc`` tree
(command lines, cgroups), the pods served to the Kubernetes client and the kubelet's pod-resources
allocations, so everything the exporter sees about a simulated node agrees.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from common.quoting import InputError, short_repr
from common.units import parse_size
from simulator.signals import Burst, Constant, Points, Signal, signal_from_spec


class ScenarioError(InputError):
    """A scenario file that cannot be used; the message names the file and the field."""


def _signal(spec: object) -> Signal:
    if isinstance(spec, Signal):
        return spec
    return signal_from_spec(spec)


def _size_signal(spec: object) -> Signal:
    if isinstance(spec, Signal):
        return spec
    return signal_from_spec(spec, size=True)


def _optional_size_signal(spec: object) -> Signal | None:
    return None if spec is None else _size_signal(spec)


def _size(spec: object) -> float:
    if isinstance(spec, str | int | float):
        return parse_size(spec)
    raise ValueError(f"expected a size such as '80GiB', got {short_repr(spec)}")


MIB = 2**20  # bytes
GIB = 2**30  # bytes


def _whole_mib(spec: object) -> int:
    """A size rounded to whole MiB (bytes): the CUDA allocator's and NVML's granularity."""
    return round(_size(spec) / MIB) * MIB


ActivitySignal = Annotated[Any, BeforeValidator(_signal)]
MemorySignal = Annotated[Any, BeforeValidator(_size_signal)]
OptionalMemorySignal = Annotated[Any, BeforeValidator(_optional_size_signal)]
Size = Annotated[float, BeforeValidator(_size)]
MibSize = Annotated[int, BeforeValidator(_whole_mib)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, validate_default=True)


# What a GPU model looks like to NVML: memory, NVML architecture code, power range.
KNOWN_MODELS: dict[str, tuple[float, int, float, float]] = {
    # name: (memory bytes, NVML_DEVICE_ARCH_*, idle watts, max watts)
    "NVIDIA H100 80GB HBM3": (80 * 2**30, 9, 70.0, 700.0),
    "NVIDIA H100 PCIe": (80 * 2**30, 9, 50.0, 350.0),
    "NVIDIA H200": (141 * 2**30, 9, 75.0, 700.0),
    "NVIDIA A100-SXM4-80GB": (80 * 2**30, 7, 55.0, 400.0),
    "NVIDIA A100-SXM4-40GB": (40 * 2**30, 7, 50.0, 400.0),
    "NVIDIA L4": (24 * 2**30, 8, 16.0, 72.0),
    "NVIDIA L40S": (48 * 2**30, 8, 35.0, 350.0),
    "Tesla T4": (16 * 2**30, 6, 10.0, 70.0),
    "NVIDIA B200": (180 * 2**30, 10, 120.0, 1000.0),
}
_MIG_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb$")


@dataclass(frozen=True)
class DeviceHealthModel:
    """What a GPU model's driver reports for clocks, memory and interconnect (nvidia-smi -q)."""

    sm_clock_idle_mhz: int  # SM clock at idle (P0 with nothing running)
    sm_clock_max_mhz: int  # SM clock under load, no throttling
    memory_clock_mhz: int  # memory clock in P0 (fixed on HBM parts)
    nvlink_links: int  # NVLink links; 0 on PCIe cards
    hbm: bool  # HBM memory: a memory temperature sensor and row remapping (GDDR parts have neither)


HEALTH_MODELS: dict[str, DeviceHealthModel] = {
    "NVIDIA H100 80GB HBM3": DeviceHealthModel(345, 1980, 2619, 18, True),
    "NVIDIA H100 PCIe": DeviceHealthModel(345, 1755, 1593, 0, True),
    "NVIDIA H200": DeviceHealthModel(345, 1980, 3201, 18, True),
    "NVIDIA A100-SXM4-80GB": DeviceHealthModel(210, 1410, 1593, 12, True),
    "NVIDIA A100-SXM4-40GB": DeviceHealthModel(210, 1410, 1215, 12, True),
    "NVIDIA L4": DeviceHealthModel(210, 2040, 6251, 0, False),
    "NVIDIA L40S": DeviceHealthModel(210, 2520, 9001, 0, False),
    "Tesla T4": DeviceHealthModel(300, 1590, 5001, 0, False),
    "NVIDIA B200": DeviceHealthModel(345, 1965, 3996, 18, True),
}
"""Per model; a model not listed reads like an H100 SXM."""


class MigSpec(_Strict):
    """One MIG GPU instance (with one compute instance) on a MIG-enabled GPU."""

    gi: int = Field(ge=0, description="GPU instance id (nvidia-smi mig -lgi)")
    ci: int = Field(default=0, ge=0, description="compute instance id")
    profile: str = Field(description="MIG profile, e.g. '3g.40gb'")
    memory: Size | None = Field(default=None, description="bytes; derived from the profile when absent")

    @model_validator(mode="after")
    def _profile_shape(self) -> MigSpec:
        if not _MIG_PROFILE.match(self.profile):
            raise ValueError(f"MIG profile {self.profile!r} is not of the form '<n>g.<m>gb'")
        return self

    @property
    def memory_bytes(self) -> int:
        if self.memory is not None:
            return int(self.memory)
        match = _MIG_PROFILE.match(self.profile)
        assert match is not None
        return int(match.group(2)) * 10**9

    @property
    def slices(self) -> int:
        match = _MIG_PROFILE.match(self.profile)
        assert match is not None
        return int(match.group(1))


class HangSpec(_Strict):
    """An NVML function that does not return on one GPU: a call made in [at, until) blocks until ``until``."""

    function: str
    at: float = Field(default=0.0, ge=0, description="scenario second from which calls block")
    until: float | None = Field(
        default=None, description="scenario second at which blocked calls return; never (until the simulation stops)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> HangSpec:
        if self.until is not None and self.until <= self.at:
            raise ValueError(f"hang of {self.function}: until ({self.until}) must be after at ({self.at})")
        return self


class XidSpec(_Strict):
    """An XID error the driver reports for one GPU at a scenario second (delivered through NVML events)."""

    at: float = Field(ge=0, description="scenario second of the error")
    xid: int = Field(gt=0, description="XID code, e.g. 79 (fallen off the bus), 48 (double-bit ECC), 13 (app error)")


class RowRemapSpec(_Strict):
    """Row remapping state from a scenario second on (nvmlDeviceGetRemappedRows); later entries replace it."""

    at: float = Field(default=0.0, ge=0, description="scenario second from which the driver reports this")
    correctable: int = Field(default=0, ge=0, description="rows remapped for correctable errors")
    uncorrectable: int = Field(default=0, ge=0, description="rows remapped for uncorrectable errors")
    pending: bool = Field(default=False, description="a remap waits for the next GPU reset")
    failed: bool = Field(default=False, description="a remap failed: the GPU needs service")


class GpuSpec(_Strict):
    index: int = Field(ge=0)
    model: str = "NVIDIA H100 80GB HBM3"
    memory: Size | None = None
    uuid: str | None = None
    architecture: int | None = Field(default=None, description="NVML_DEVICE_ARCH_* code; from the model")
    reserved_memory: Size = Field(default=512 * 2**20, description="bytes the driver holds with no process")
    temperature_c: float = 35.0
    mig: list[MigSpec] | None = None
    unsupported: list[str] = Field(
        default_factory=list,
        description=(
            "NVML functions that answer NOT_SUPPORTED on this GPU, and NVML_FI_* fields that "
            "nvmlDeviceGetFieldValues answers NOT_SUPPORTED for"
        ),
    )
    failing: dict[str, str] = Field(
        default_factory=dict,
        description="NVML function -> error it answers on this GPU, by NVML_ERROR_ name (UNKNOWN, TIMEOUT…)",
    )
    hangs: list[HangSpec] = Field(default_factory=list, description="NVML functions that block on this GPU")
    lost_at: float | None = Field(default=None, description="scenario second at which the GPU falls off the bus")
    recovers_at: float | None = None
    mps: bool = Field(
        default=False,
        description=(
            "an MPS control daemon serves this GPU: its CUDA processes are MPS clients (mps_client: true) that run "
            "through one MPS server process (mps_server: true). As on a real driver, NVML lists the server and "
            "the clients as compute processes, the clients alone as MPS processes, and gives per-process "
            "utilisation samples to the server only (the clients' combined activity)"
        ),
    )
    replicas: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "the replicas the NVIDIA device plugin's sharing config (timeSlicing or mps, 'replicas: N') makes of "
            "this GPU: the kubelet advertises <uuid>::0 to <uuid>::N-1, held or not. Absent: as many as the "
            "highest replica a container holds implies, or the GPU itself when none holds one"
        ),
    )
    memory_temperature_c: float = Field(
        default=33.0, description="HBM temperature at idle; it rises with memory traffic (HBM parts only)"
    )
    nvlink: bool | None = Field(
        default=None, description="whether the GPU has NVLink links; from the model (SXM parts) when absent"
    )
    pcie_replays: int = Field(default=0, ge=0, description="PCIe replays the driver counted since it loaded")
    xid: list[XidSpec] = Field(default_factory=list, description="XID errors the driver reports for this GPU")
    row_remap: list[RowRemapSpec] = Field(
        default_factory=list, description="row remapping state over time; none: no rows remapped"
    )
    timeslice_swing: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "how far the time-slice scheduler swings the per-sample split of kernel time between the processes "
            "(0: each sample reads its process's mean; 1: splits as wide as 86/12 then 11/88 on a real H200). "
            "Each process's smUtil deviates deterministically (seeded by scenario name, GPU, PID and the "
            "driver's one-second sample slot) around its mean; the processes' sum per sample and each "
            "process's long-run mean are kept; memUtil follows smUtil's swing"
        ),
    )

    @model_validator(mode="after")
    def _known_errors(self) -> GpuSpec:
        import pynvml

        for function, error in self.failing.items():
            if not isinstance(getattr(pynvml, f"NVML_ERROR_{error}", None), int):
                raise ValueError(f"GPU {self.index}: {function} fails with unknown NVML error {error!r}")
        if self.mps and self.mig:
            raise ValueError(f"GPU {self.index}: MPS on MIG instances is not simulated; give 'mps' or 'mig', not both")
        if self.replicas is not None and self.mig:
            raise ValueError(f"GPU {self.index}: 'replicas' shares a whole GPU; a MIG-enabled GPU has instances")
        if self.mps and self.timeslice_swing:
            raise ValueError(
                f"GPU {self.index}: timeslice_swing does not apply under MPS, whose clients run concurrently and "
                "whose only utilisation samples are the server's"
            )
        return self

    @property
    def memory_bytes(self) -> int:
        if self.memory is not None:
            return int(self.memory)
        return int(KNOWN_MODELS.get(self.model, KNOWN_MODELS["NVIDIA H100 80GB HBM3"])[0])

    @property
    def arch(self) -> int:
        if self.architecture is not None:
            return self.architecture
        return KNOWN_MODELS.get(self.model, (0, 0, 0.0, 0.0))[1]

    @property
    def power_range(self) -> tuple[float, float]:
        _, _, idle, peak = KNOWN_MODELS.get(self.model, (0, 0, 50.0, 400.0))
        return idle, peak

    @property
    def health_model(self) -> DeviceHealthModel:
        return HEALTH_MODELS.get(self.model, HEALTH_MODELS["NVIDIA H100 80GB HBM3"])

    @property
    def nvlink_links(self) -> int:
        links = self.health_model.nvlink_links
        if self.nvlink is None:
            return links
        return (links or 18) if self.nvlink else 0

    def row_remap_at(self, t: float) -> RowRemapSpec:
        """The row remapping state the driver reports at scenario second ``t``."""
        state = RowRemapSpec()
        for entry in sorted(self.row_remap, key=lambda r: r.at):
            if entry.at <= t:
                state = entry
        return state

    def mig_instance(self, gi: int) -> MigSpec | None:
        for inst in self.mig or ():
            if inst.gi == gi:
                return inst
        return None


_VLLM_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def _signal_range(signal: Signal) -> tuple[float, float] | None:
    """(lowest, highest) value a scenario signal takes, for the kinds scenario files build; None if unknown."""
    if isinstance(signal, Constant):
        return signal.level, signal.level
    if isinstance(signal, Points):
        return min(signal.vs), max(signal.vs)
    if isinstance(signal, Burst):
        return min(signal.high, signal.low), max(signal.high, signal.low)
    return None


class VllmSpec(_Strict):
    """The vLLM server whose GPU worker a process is: its memory budget, start-up and traffic.

    The budget follows vLLM (0.6.5+): ``KV = total_gpu_memory × gpu_memory_utilization − (weights +
    activation_peak + non_torch)``, ``num_gpu_blocks = floor(KV / (block_size × kv_bytes_per_token))`` (the
    minimum over the ranks of a tensor-parallel server). What NVML shows for the process is derived from it
    (see :class:`VllmBudget`), so a process with a ``vllm`` block gives no ``memory`` of its own.
    Sizes are kept in whole MiB.
    """

    model: str = Field(min_length=1, description="served model name (the model_name label)")
    version: str = Field(default="0.11.0", description="vLLM release: picks metric names and log formats")
    gpu_memory_utilization: float = Field(gt=0, le=1, description="--gpu-memory-utilization")
    weights: MibSize = Field(description="bytes the weights take on this GPU (split by tensor parallelism)")
    non_torch: MibSize = Field(default=0, description="bytes vLLM profiles outside PyTorch (cuBLAS, NCCL work)")
    activation_peak: MibSize = Field(default=0, description="bytes of PyTorch activation peak when profiling")
    cuda_graphs: MibSize = Field(default=0, description="bytes the captured CUDA graphs hold (outside the budget)")
    cuda_context: MibSize = Field(default=512 * MIB, description="bytes of CUDA context (outside the budget)")
    kv_bytes_per_token: int = Field(gt=0, description="KV cache bytes per token on this GPU")
    block_size: int = Field(default=16, gt=0, description="tokens per KV cache block")
    max_model_len: int = Field(gt=0, description="--max-model-len, tokens")
    tensor_parallel: int = Field(default=1, ge=1, description="--tensor-parallel-size")
    rank: int = Field(default=0, ge=0, description="tensor-parallel rank of this worker process")
    kv_usage: ActivitySignal = Field(default=0.0, description="fraction of KV blocks in use (0..1), rank 0 only")
    prompt_tokens_per_s: ActivitySignal = Field(default=0.0, description="prefill tokens per second, rank 0 only")
    generation_tokens_per_s: ActivitySignal = Field(default=0.0, description="tokens generated per second")
    requests_running: ActivitySignal = Field(default=0.0, description="requests in the running batch")
    requests_waiting: ActivitySignal = Field(default=0.0, description="requests queued")
    itl_seconds: float = Field(default=0.02, gt=0, description="median inter-token latency on an idle GPU, s")
    itl_contention: float = Field(
        default=1.0, ge=0, description="inter-token latency grows by this × the SM activity of others on the GPU"
    )
    load_seconds: float = Field(default=5.0, gt=0, description="seconds from start to weights loaded")
    profile_seconds: float = Field(default=3.0, gt=0, description="seconds of profiling before the KV reservation")
    graph_seconds: float = Field(default=2.0, gt=0, description="seconds of CUDA graph capture, then ready")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="port the simulated server binds on 127.0.0.1; free when absent"
    )

    @model_validator(mode="after")
    def _checks(self) -> VllmSpec:
        if not _VLLM_VERSION.match(self.version):
            raise ValueError(f"vllm version {self.version!r} is not of the form '0.11.0'")
        if self.rank >= self.tensor_parallel:
            raise ValueError(f"vllm rank {self.rank} is outside tensor_parallel {self.tensor_parallel}")
        bounds = {
            "kv_usage": (self.kv_usage, 1.0),
            "prompt_tokens_per_s": (self.prompt_tokens_per_s, math.inf),
            "generation_tokens_per_s": (self.generation_tokens_per_s, math.inf),
            "requests_running": (self.requests_running, math.inf),
            "requests_waiting": (self.requests_waiting, math.inf),
        }
        for name, (signal, highest) in bounds.items():
            span = _signal_range(signal)
            if span is not None and (span[0] < 0 or span[1] > highest):
                raise ValueError(f"vllm {name} must stay within 0..{highest}, got values {span[0]}..{span[1]}")
        return self

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        match = _VLLM_VERSION.match(self.version)
        assert match is not None
        return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)

    @property
    def page_bytes(self) -> int:
        """Bytes of one KV block on this GPU."""
        return self.block_size * self.kv_bytes_per_token


@dataclass(frozen=True)
class VllmBudget:
    """One vLLM worker's memory as vLLM computes it and as NVML shows it (bytes unless named otherwise).

    ``nvml_bytes = weights + kv_cache_memory_bytes + overhead_bytes`` where ``overhead_bytes = cuda_context +
    cuda_graphs + non_torch + activation_peak + kv_padding`` (the KV tensors rounded up to a whole MiB).
    """

    pid: int
    spec: VllmSpec
    total_gpu_memory: int  # of the GPU, or of the MIG instance
    requested: float  # total_gpu_memory × gpu_memory_utilization
    kv_budget: float  # this rank's "Available KV cache memory"
    num_gpu_blocks: int  # the server's: the minimum over its ranks
    ranks: tuple[int, ...]  # PIDs of the server's worker processes, by rank

    @property
    def kv_cache_memory_bytes(self) -> int:
        return self.num_gpu_blocks * self.spec.page_bytes

    @property
    def kv_cache_size_tokens(self) -> int:
        return self.num_gpu_blocks * self.spec.block_size

    @property
    def max_concurrency(self) -> float:
        """Requests of max_model_len tokens the KV cache holds at once."""
        return self.kv_cache_size_tokens / self.spec.max_model_len

    @property
    def kv_allocated(self) -> int:
        return math.ceil(self.kv_cache_memory_bytes / MIB) * MIB

    @property
    def overhead_bytes(self) -> int:
        s = self.spec
        padding = self.kv_allocated - self.kv_cache_memory_bytes
        return s.cuda_context + s.cuda_graphs + s.non_torch + s.activation_peak + padding

    @property
    def nvml_bytes(self) -> int:
        return self.spec.weights + self.kv_cache_memory_bytes + self.overhead_bytes

    @property
    def weights_loaded_at(self) -> float:
        """Seconds after the process starts."""
        return self.spec.load_seconds

    @property
    def kv_reserved_at(self) -> float:
        return self.spec.load_seconds + self.spec.profile_seconds

    @property
    def ready_at(self) -> float:
        return self.kv_reserved_at + self.spec.graph_seconds

    def memory_signal(self, start: float) -> Signal:
        """GPU memory over scenario time: CUDA context, weights streaming in, profiling, the KV reservation
        (one step), CUDA graph capture."""
        s = self.spec
        ctx = s.cuda_context
        loaded = ctx + s.weights
        profiled = loaded + s.non_torch + s.activation_peak
        reserved = profiled + self.kv_allocated
        return Points.of(
            [
                (start, ctx),
                (start + self.weights_loaded_at, loaded),
                (start + self.kv_reserved_at, profiled),
                (start + self.kv_reserved_at, reserved),
                (start + self.ready_at, reserved + s.cuda_graphs),
            ]
        )


class ProcessSpec(_Strict):
    """A process with a CUDA context on one or more GPUs."""

    pid: int = Field(gt=0)
    name: str = Field(description="command name (/proc/<pid>/comm)")
    cmdline: list[str] = Field(default_factory=list)
    gpus: list[int] = Field(min_length=1, description="GPU indexes it holds a context on")
    mig: int | None = Field(default=None, description="GPU instance id when on a MIG-enabled GPU")
    memory: OptionalMemorySignal = Field(
        default=None, description="GPU memory per GPU, bytes or sizes, as a signal; derived from 'vllm' if set"
    )
    sm: ActivitySignal = Field(default=0.0, description="fraction of time its kernels run (0..1)")
    mem_bw: ActivitySignal = Field(default=0.0, description="memory-controller busy fraction (0..1)")
    sm_fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description=(
            "share of SMs its kernels fill: GPM SM active (and DCGM_FI_PROF_SM_ACTIVE) is sm × sm_fraction while "
            "NVML's smUtil is sm. A launch-bound loop of one-element kernels reads smUtil 0.2 with sm_fraction "
            "0.00125 (GPM SM active 0.00025 on a real H200)"
        ),
    )
    tensor_fraction: float = Field(default=0.5, ge=0, le=1, description="share of kernel time on tensor cores")
    occupancy: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description=(
            "resident warps per busy SM against the maximum: GPM SM occupancy is SM active × occupancy "
            "(about 0.15 for a large bf16 matmul, 0.05 for one-element kernels, on a real H200)"
        ),
    )
    start: float = 0.0
    stop: float | None = None
    container: str | None = Field(default=None, description="'namespace/pod/container' it runs in")
    uid: int = 0
    vllm: VllmSpec | None = Field(default=None, description="the vLLM server this process is a GPU worker of")
    mps_server: bool = Field(
        default=False,
        description=(
            "the MPS server (command name 'nvidia-cuda-mps-server', about 66 MiB per GPU) of GPUs with 'mps': "
            "true. Its utilisation samples are its clients' combined activity, so it gives no 'sm' or 'mem_bw' of "
            "its own. Under Kubernetes it runs in the NVIDIA device plugin's MPS control daemon pod "
            "(nvidia-device-plugin-mps-control-daemon, container mps-control-daemon-ctr), outside one when absent"
        ),
    )
    mps_client: bool = Field(
        default=False,
        description=(
            "a CUDA process that reaches its GPUs through their MPS server (nvidia-smi type 'M+C'): every GPU it "
            "uses has 'mps': true and an MPS server alive over the client's whole lifetime. Its 'sm', 'mem_bw' "
            "and 'sm_fraction' drive the device's utilisation, GPM and DCGM readings and the server's samples; "
            "it has no samples of its own"
        ),
    )

    @model_validator(mode="after")
    def _mps_role(self) -> ProcessSpec:
        if self.mps_server and self.mps_client:
            raise ValueError(f"process {self.pid}: an MPS server is not also an MPS client; set one of the two")
        if self.mps_server:
            for name in ("sm", "mem_bw"):
                if _signal_range(getattr(self, name)) != (0.0, 0.0):
                    raise ValueError(
                        f"process {self.pid}: an MPS server has no '{name}' of its own; its utilisation is its "
                        "clients' (give them 'sm' and 'mem_bw')"
                    )
        return self

    @model_validator(mode="after")
    def _fractions(self) -> ProcessSpec:
        for name in ("sm", "mem_bw"):
            span = _signal_range(getattr(self, name))
            if span is not None and not (span[0] >= 0.0 and span[1] <= 1.0):
                shown = f"{span[0]:g}" if span[0] == span[1] else f"{span[0]:g}..{span[1]:g}"
                raise ValueError(f"process {self.pid}: '{name}' is a fraction of time, 0 to 1, got {shown}")
        return self

    @model_validator(mode="after")
    def _memory_or_vllm(self) -> ProcessSpec:
        if self.vllm is None and self.memory is None:
            raise ValueError(f"process {self.pid}: give its GPU 'memory' (or a 'vllm' block it follows from)")
        if self.vllm is not None and self.memory is not None:
            raise ValueError(
                f"process {self.pid}: give either 'memory' or a 'vllm' block, not both: the process's memory "
                "follows from the vLLM budget (weights + KV cache + overhead)"
            )
        if self.vllm is not None and len(self.gpus) != 1:
            raise ValueError(f"process {self.pid}: a vLLM worker process runs on one GPU, got {self.gpus}")
        return self

    def alive(self, t: float) -> bool:
        return self.start <= t and (self.stop is None or t < self.stop)


def _overlap(a: ProcessSpec, b: ProcessSpec) -> bool:
    """Whether two processes' lifetimes share an instant."""
    a_ends_before_b = a.stop is not None and a.stop <= b.start
    b_ends_before_a = b.stop is not None and b.stop <= a.start
    return not (a_ends_before_b or b_ends_before_a)


def _covers(server: ProcessSpec, client: ProcessSpec) -> bool:
    """Whether ``server`` is alive over ``client``'s whole lifetime."""
    if server.start > client.start:
        return False
    return server.stop is None or (client.stop is not None and client.stop <= server.stop)


class OwnerSpec(_Strict):
    kind: str
    name: str


class ContainerSpec(_Strict):
    name: str
    id: str | None = Field(default=None, description="container id; derived when absent")
    runtime: Literal["containerd", "cri-o", "docker"] = "containerd"
    image: str = "registry.example/app:1"
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    resource: str = "nvidia.com/gpu"
    devices: list[str] = Field(
        default_factory=list,
        description=(
            "device ids the kubelet allocated: GPU indexes ('0'), UUIDs, '<index>::<replica>' or 'mig:<index>:<gi>'"
        ),
    )


class PodSpec(_Strict):
    namespace: str
    name: str
    uid: str | None = None
    qos: Literal["guaranteed", "burstable", "besteffort"] = "burstable"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    owner: OwnerSpec | None = None
    containers: list[ContainerSpec] = Field(min_length=1)
    start: float = Field(default=0.0, description="scenario second the pod is created at")
    stop: float | None = Field(default=None, description="scenario second the pod is deleted at; never when absent")

    @model_validator(mode="after")
    def _lifetime(self) -> PodSpec:
        if self.stop is not None and self.stop <= self.start:
            raise ValueError(f"pod {self.namespace}/{self.name}: stop ({self.stop}) must be after start ({self.start})")
        return self

    def alive(self, t: float) -> bool:
        return self.start <= t and (self.stop is None or t < self.stop)


class FaultSpec(_Strict):
    driver_missing_until: float | None = Field(
        default=None, description="NVML init answers DRIVER_NOT_LOADED until this scenario second"
    )
    init_hangs_until: float | None = Field(
        default=None, description="NVML init made before this scenario second blocks until it (a wedged driver)"
    )
    missing_functions: list[str] = Field(
        default_factory=list, description="NVML functions the simulated driver does not export"
    )
    duplicate_util_samples: bool = Field(default=False, description="return two samples per PID per call")
    util_over_100: list[int] = Field(default_factory=list, description="PIDs whose smUtil reads above 100")
    host_pids_hidden: bool = Field(
        default=False, description="the exporter runs without hostPID: no GPU process is visible under /proc"
    )
    vanish_between_calls: list[int] = Field(
        default_factory=list, description="PIDs listed by the memory call that are gone by the next call"
    )


class DcgmExporterSpec(_Strict):
    """A simulated dcgm-exporter beside the node (used with --dcgm-exporter-url simulated)."""

    style: Literal["3.3", "next"] = Field(
        default="3.3", description="page layout: 3.3 (releases to date, Hostname) or next (main branch, hostname)"
    )
    down_between: list[tuple[float, float]] = Field(default_factory=list, description="answers 503 then")
    slow_between: list[tuple[float, float]] = Field(default_factory=list, description="answers late then")
    slow_seconds: float = 5.0
    garbage_between: list[tuple[float, float]] = Field(default_factory=list, description="answers garbage then")


class NodeSpec(_Strict):
    name: str = "sim-gpu-node"
    driver_version: str = "570.124.06"
    cuda_driver_version: int = 12080


MAX_GPUS = 64
"""GPUs a simulated node may have: the largest real nodes hold 8 to 16 (NVL72 racks 4 per node)."""
MAX_PROCESSES = 50_000
"""Processes (and pods) a scenario may list over its whole run: a churn soak lists a few thousand."""


class Scenario(_Strict):
    name: str
    description: str = ""
    node: NodeSpec = Field(default_factory=NodeSpec)
    gpus: list[GpuSpec] = Field(min_length=1, max_length=MAX_GPUS)
    processes: list[ProcessSpec] = Field(default_factory=list, max_length=MAX_PROCESSES)
    pods: list[PodSpec] = Field(default_factory=list, max_length=MAX_PROCESSES)
    faults: FaultSpec = Field(default_factory=FaultSpec)
    dcgm_exporter: DcgmExporterSpec = Field(default_factory=DcgmExporterSpec)
    _vllm: dict[int, VllmBudget] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        indexes = [g.index for g in self.gpus]
        if sorted(indexes) != list(range(len(indexes))):
            raise ValueError(f"gpus must have indexes 0..{len(indexes) - 1} once each, got {indexes}")
        pids = Counter(p.pid for p in self.processes)
        dupes = sorted(pid for pid, n in pids.items() if n > 1)
        if dupes:
            raise ValueError(f"process PIDs must be unique, repeated: {dupes}")
        by_index = {g.index: g for g in self.gpus}
        containers = {f"{p.namespace}/{p.name}/{c.name}" for p in self.pods for c in p.containers}
        for proc in self.processes:
            for gi in proc.gpus:
                gpu = by_index.get(gi)
                if gpu is None:
                    raise ValueError(f"process {proc.pid} uses GPU {gi}, which the scenario does not define")
                if gpu.mig and (proc.mig is None or gpu.mig_instance(proc.mig) is None):
                    raise ValueError(
                        f"process {proc.pid} is on MIG-enabled GPU {gi}: set 'mig' to one of its "
                        f"GPU instance ids {[m.gi for m in gpu.mig]}"
                    )
                if not gpu.mig and proc.mig is not None:
                    raise ValueError(f"process {proc.pid} names MIG instance {proc.mig} but GPU {gi} has no MIG")
            if proc.container is not None and proc.container not in containers:
                raise ValueError(f"process {proc.pid} runs in container {proc.container!r}, which no pod defines")
        self._check_mps(by_index)
        self._derive_vllm_memory()
        self._check_memory_fits()
        return self

    def _check_memory_fits(self) -> None:
        """No process holds more memory than its GPU (or MIG instance) has, alone or with the processes alive
        beside it at its start (each at its highest)."""
        by_index = {g.index: g for g in self.gpus}
        # per (GPU, MIG instance): (time, 0 = stops / 1 = starts, pid, bytes); stops first at a tie
        events: dict[tuple[int, int | None], list[tuple[float, int, int, float]]] = {}
        for proc in self.processes:
            span = _signal_range(proc.memory) if proc.memory is not None else None
            if span is None:
                continue
            for gi in proc.gpus:
                gpu = by_index[gi]
                inst = gpu.mig_instance(proc.mig) if proc.mig is not None else None
                device = inst.memory_bytes if inst is not None else gpu.memory_bytes
                if span[1] > device:
                    where = f"GPU {gi}" + (f" MIG instance {proc.mig}" if proc.mig is not None else "")
                    raise ValueError(
                        f"process {proc.pid}: holds up to {span[1] / GIB:.2f} GiB, more than the "
                        f"{device / GIB:.2f} GiB {where} has"
                    )
                timeline = events.setdefault((gi, proc.mig), [])
                timeline.append((proc.start, 1, proc.pid, span[1]))
                if proc.stop is not None:
                    timeline.append((proc.stop, 0, proc.pid, span[1]))
        for (gi, mig), timeline in events.items():
            gpu = by_index[gi]
            inst = gpu.mig_instance(mig) if mig is not None else None
            device = inst.memory_bytes if inst is not None else gpu.memory_bytes
            alive: dict[int, float] = {}
            total = 0.0
            for t, starts, pid, held in sorted(timeline):
                if not starts:
                    total -= alive.pop(pid, 0.0)
                    continue
                alive[pid] = held
                total += held
                if total > device:
                    pids = ", ".join(str(p) for p in sorted(alive))
                    raise ValueError(
                        f"processes {pids} hold up to {total / GIB:.2f} GiB together on GPU {gi} at second {t:g}, "
                        f"more than the {device / GIB:.2f} GiB it has"
                    )

    def _check_mps(self, by_index: dict[int, GpuSpec]) -> None:
        """MPS roles fit their GPUs: clients and servers only on MPS GPUs, nothing else there, one server at a
        time per GPU, and a server alive over each client's whole lifetime."""
        servers: dict[int, list[ProcessSpec]] = {}
        for proc in self.processes:
            for gi in proc.gpus:
                mps = by_index[gi].mps
                if proc.mps_client and not mps:
                    raise ValueError(
                        f"process {proc.pid} is an MPS client (mps_client: true) on GPU {gi}, which does not run "
                        "MPS (set 'mps: true' on the GPU)"
                    )
                if proc.mps_server and not mps:
                    raise ValueError(
                        f"process {proc.pid} is an MPS server (mps_server: true) on GPU {gi}, which does not run "
                        "MPS (set 'mps: true' on the GPU)"
                    )
                if mps and not (proc.mps_client or proc.mps_server):
                    raise ValueError(
                        f"process {proc.pid} is on MPS GPU {gi} but is neither its MPS server nor a client: CUDA "
                        "processes there connect through the server, so set 'mps_client: true'"
                    )
                if proc.mps_server:
                    servers.setdefault(gi, []).append(proc)
        for gi, procs in servers.items():
            for a, b in itertools.combinations(procs, 2):
                if _overlap(a, b):
                    raise ValueError(
                        f"processes {a.pid} and {b.pid} are both MPS servers of GPU {gi} at once; the control "
                        "daemon runs one server per GPU at a time"
                    )
        for proc in self.processes:
            if not proc.mps_client:
                continue
            for gi in proc.gpus:
                if not any(_covers(server, proc) for server in servers.get(gi, ())):
                    raise ValueError(
                        f"process {proc.pid} is an MPS client on GPU {gi} but no MPS server (mps_server: true) on "
                        f"that GPU is alive over its whole lifetime (from second {proc.start} to "
                        f"{'the end' if proc.stop is None else f'second {proc.stop}'})"
                    )

    def _device_memory(self, proc: ProcessSpec) -> int:
        gpu = self.gpus[proc.gpus[0]]
        if proc.mig is not None:
            inst = gpu.mig_instance(proc.mig)
            assert inst is not None
            return inst.memory_bytes
        return gpu.memory_bytes

    def _vllm_groups(self) -> list[list[ProcessSpec]]:
        """The vLLM servers: their worker processes by rank (a tensor-parallel server's share its container)."""
        groups: dict[tuple[object, ...], list[ProcessSpec]] = {}
        for proc in self.processes:
            spec = proc.vllm
            if spec is None:
                continue
            key: tuple[object, ...] = (
                ("pid", proc.pid) if spec.tensor_parallel == 1 else ("server", proc.container, spec.model)
            )
            groups.setdefault(key, []).append(proc)
        servers = []
        for procs in groups.values():
            first = procs[0].vllm
            assert first is not None
            ranks = sorted(p.vllm.rank for p in procs if p.vllm is not None)
            if len(ranks) != first.tensor_parallel or ranks != list(range(len(ranks))):  # no range(10**400)
                raise ValueError(
                    f"process {procs[0].pid}: vLLM server {first.model!r} in {procs[0].container!r} has "
                    f"tensor_parallel {first.tensor_parallel} but worker ranks {ranks}: give each rank once"
                )
            shared = ("model", "version", "gpu_memory_utilization", "kv_bytes_per_token", "block_size", "max_model_len")
            for proc in procs[1:]:
                assert proc.vllm is not None
                for name in shared:
                    if getattr(proc.vllm, name) != getattr(first, name):
                        raise ValueError(
                            f"process {proc.pid}: vllm {name} {getattr(proc.vllm, name)!r} differs from "
                            f"{getattr(first, name)!r} on process {procs[0].pid} of the same server"
                        )
            servers.append(sorted(procs, key=lambda p: p.vllm.rank if p.vllm is not None else 0))
        return servers

    def _derive_vllm_memory(self) -> None:
        """Check each vLLM server's budget and give its processes the memory NVML would show."""
        for procs in self._vllm_groups():
            budgets: list[tuple[ProcessSpec, VllmSpec, int, float, float]] = []
            for proc in procs:
                spec = proc.vllm
                assert spec is not None
                total = self._device_memory(proc)
                requested = total * spec.gpu_memory_utilization
                # floats: whole-MiB sizes near the float range sum past it as ints, which float() refuses
                kv = requested - (float(spec.weights) + float(spec.activation_peak) + float(spec.non_torch))
                if kv <= 0:
                    raise ValueError(
                        f"process {proc.pid}: vLLM budget leaves no room for the KV cache: total_gpu_memory "
                        f"{total / GIB:.2f} GiB × gpu_memory_utilization {spec.gpu_memory_utilization} = "
                        f"{requested / GIB:.2f} GiB − (weights {spec.weights / GIB:.2f} GiB + activation_peak "
                        f"{spec.activation_peak / GIB:.2f} GiB + non_torch {spec.non_torch / GIB:.2f} GiB) = "
                        f"{kv / GIB:.2f} GiB"
                    )
                budgets.append((proc, spec, total, requested, kv))
            # a block larger than the budget fits none (and float // an int past the float range overflows)
            blocks = min(int(kv // spec.page_bytes) if spec.page_bytes <= kv else 0 for _, spec, _, _, kv in budgets)
            first = budgets[0][1]
            if blocks * first.block_size < first.max_model_len:
                raise ValueError(
                    f"process {procs[0].pid}: the KV cache holds {blocks * first.block_size} tokens, fewer than "
                    f"max_model_len {first.max_model_len}: vLLM would refuse to start"
                )
            ranks = tuple(p.pid for p in procs)
            for proc, spec, total, requested, kv in budgets:
                budget = VllmBudget(proc.pid, spec, total, requested, kv, blocks, ranks)
                if budget.nvml_bytes > total:
                    raise ValueError(
                        f"process {proc.pid}: vLLM would hold {budget.nvml_bytes / GIB:.2f} GiB, more than the "
                        f"{total / GIB:.2f} GiB its GPU has"
                    )
                self._vllm[proc.pid] = budget
                # The process's memory follows from its budget; the model stays frozen to its readers.
                object.__setattr__(proc, "memory", budget.memory_signal(proc.start))

    def vllm_budget(self, pid: int) -> VllmBudget | None:
        """The vLLM budget of a process with a ``vllm`` block, else None."""
        return self._vllm.get(pid)

    def vllm_servers(self) -> list[list[VllmBudget]]:
        """Each vLLM server's workers' budgets, rank 0 first, in the order of the scenario's processes."""
        seen: set[int] = set()
        servers = []
        for proc in self.processes:
            budget = self._vllm.get(proc.pid)
            if budget is None or budget.ranks[0] in seen:
                continue
            seen.add(budget.ranks[0])
            servers.append([self._vllm[pid] for pid in budget.ranks])
        return servers

    def gpu_uuid(self, index: int) -> str:
        spec = self.gpus[index]
        if spec.uuid:
            return spec.uuid
        return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"gpuattr-sim/{self.node.name}/{index}"))

    def mig_uuid(self, index: int, gi: int) -> str:
        return "MIG-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"gpuattr-sim/{self.node.name}/{index}/mig/{gi}"))

    def pod_uid(self, pod: PodSpec) -> str:
        if pod.uid:
            return pod.uid
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gpuattr-sim/pod/{pod.namespace}/{pod.name}"))

    def container_id(self, pod: PodSpec, container: ContainerSpec) -> str:
        if container.id:
            return container.id
        seed = f"gpuattr-sim/container/{pod.namespace}/{pod.name}/{container.name}"
        return hashlib.sha256(seed.encode()).hexdigest()


ALIAS_NODES = 100_000
"""YAML nodes that aliases may add to a scenario file beyond its own: bounds "billion laughs" files, which
PyYAML shares rather than copies but validation would walk copy by copy."""
MAX_PROBLEMS = 20
"""Problems a ScenarioError lists; the rest are counted."""


def _expanded_nodes(raw: object, limit: int) -> int:
    """Nodes of a loaded YAML document with every alias expanded (each visit counts); stops past ``limit``."""
    count, stack = 0, [raw]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; ScenarioError names the file and each bad field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise ScenarioError(f"scenario {path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"scenario {path}: not UTF-8: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ScenarioError(f"scenario {path}: nested too deeply to read") from None
    limit = 2 * len(text) + ALIAS_NODES  # a file without aliases holds fewer nodes than twice its characters
    if _expanded_nodes(raw, limit) > limit:
        raise ScenarioError(f"scenario {path}: its YAML aliases expand to more than {limit} nodes")
    return parse_scenario(raw, source=str(path))


def parse_scenario(raw: object, source: str = "<scenario>") -> Scenario:
    if not isinstance(raw, dict):
        raise ScenarioError(f"scenario {source}: expected a mapping at the top, got {type(raw).__name__}")
    for key, most in (("gpus", MAX_GPUS), ("processes", MAX_PROCESSES), ("pods", MAX_PROCESSES)):
        items = raw.get(key)
        if isinstance(items, list) and len(items) > most:  # refused before validating each of them
            raise ScenarioError(f"scenario {source}: {key}: {len(items):,} listed, at most {most:,} are simulated")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<top>'}: {err['msg']}" for err in errors[:MAX_PROBLEMS]
        )
        if len(errors) > MAX_PROBLEMS:
            problems += f"; and {len(errors) - MAX_PROBLEMS} more"
        raise ScenarioError(f"scenario {source}: {problems}") from exc
