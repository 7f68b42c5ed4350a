"""Scenario files: one YAML description of a simulated GPU node.

The same file drives the fake NVML (GPUs, MIG layout, processes, faults), the fake ``/proc`` tree
(command lines, cgroups), the pods served to the Kubernetes client and the kubelet's pod-resources
allocations, so everything the exporter sees about a simulated node agrees.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from exporter.sim.signals import Signal, parse_size, signal_from_spec


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the field."""


def _signal(spec: object) -> Signal:
    if isinstance(spec, Signal):
        return spec
    return signal_from_spec(spec)


def _size_signal(spec: object) -> Signal:
    if isinstance(spec, Signal):
        return spec
    return signal_from_spec(spec, size=True)


def _size(spec: object) -> float:
    if isinstance(spec, str | int | float):
        return parse_size(spec)
    raise ValueError(f"expected a size such as '80GiB', got {spec!r}")


ActivitySignal = Annotated[Any, BeforeValidator(_signal)]
MemorySignal = Annotated[Any, BeforeValidator(_size_signal)]
Size = Annotated[float, BeforeValidator(_size)]


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
        default_factory=list, description="NVML functions that answer NOT_SUPPORTED on this GPU"
    )
    failing: dict[str, str] = Field(
        default_factory=dict,
        description="NVML function -> error it answers on this GPU, by NVML_ERROR_ name (UNKNOWN, TIMEOUT…)",
    )
    lost_at: float | None = Field(default=None, description="scenario second at which the GPU falls off the bus")
    recovers_at: float | None = None

    @model_validator(mode="after")
    def _known_errors(self) -> GpuSpec:
        import pynvml

        for function, error in self.failing.items():
            if not isinstance(getattr(pynvml, f"NVML_ERROR_{error}", None), int):
                raise ValueError(f"GPU {self.index}: {function} fails with unknown NVML error {error!r}")
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

    def mig_instance(self, gi: int) -> MigSpec | None:
        for inst in self.mig or ():
            if inst.gi == gi:
                return inst
        return None


class ProcessSpec(_Strict):
    """A process with a CUDA context on one or more GPUs."""

    pid: int = Field(gt=0)
    name: str = Field(description="command name (/proc/<pid>/comm)")
    cmdline: list[str] = Field(default_factory=list)
    gpus: list[int] = Field(min_length=1, description="GPU indexes it holds a context on")
    mig: int | None = Field(default=None, description="GPU instance id when on a MIG-enabled GPU")
    memory: MemorySignal = Field(description="GPU memory per GPU, bytes or sizes, as a signal")
    sm: ActivitySignal = Field(default=0.0, description="fraction of time its kernels run (0..1)")
    mem_bw: ActivitySignal = Field(default=0.0, description="memory-controller busy fraction (0..1)")
    sm_fraction: float = Field(default=1.0, gt=0, le=1, description="share of SMs its kernels fill")
    tensor_fraction: float = Field(default=0.5, ge=0, le=1, description="share of kernel time on tensor cores")
    start: float = 0.0
    stop: float | None = None
    container: str | None = Field(default=None, description="'namespace/pod/container' it runs in")
    uid: int = 0

    def alive(self, t: float) -> bool:
        return self.start <= t and (self.stop is None or t < self.stop)


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


class FaultSpec(_Strict):
    driver_missing_until: float | None = Field(
        default=None, description="NVML init answers DRIVER_NOT_LOADED until this scenario second"
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

    style: Literal["3.3", "4.9"] = Field(default="3.3", description="page layout of that release")
    down_between: list[tuple[float, float]] = Field(default_factory=list, description="answers 503 then")
    slow_between: list[tuple[float, float]] = Field(default_factory=list, description="answers late then")
    slow_seconds: float = 5.0
    garbage_between: list[tuple[float, float]] = Field(default_factory=list, description="answers garbage then")


class NodeSpec(_Strict):
    name: str = "sim-gpu-node"
    driver_version: str = "570.124.06"
    cuda_driver_version: int = 12080


class Scenario(_Strict):
    name: str
    description: str = ""
    node: NodeSpec = Field(default_factory=NodeSpec)
    gpus: list[GpuSpec] = Field(min_length=1)
    processes: list[ProcessSpec] = Field(default_factory=list)
    pods: list[PodSpec] = Field(default_factory=list)
    faults: FaultSpec = Field(default_factory=FaultSpec)
    dcgm_exporter: DcgmExporterSpec = Field(default_factory=DcgmExporterSpec)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        indexes = [g.index for g in self.gpus]
        if sorted(indexes) != list(range(len(indexes))):
            raise ValueError(f"gpus must have indexes 0..{len(indexes) - 1} once each, got {indexes}")
        pids = [p.pid for p in self.processes]
        dupes = sorted({p for p in pids if pids.count(p) > 1})
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
        return self

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


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; ScenarioError names the file and each bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"scenario {path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path}: not valid YAML: {exc}") from exc
    return parse_scenario(raw, source=str(path))


def parse_scenario(raw: object, source: str = "<scenario>") -> Scenario:
    if not isinstance(raw, dict):
        raise ScenarioError(f"scenario {source}: expected a mapping at the top, got {type(raw).__name__}")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<top>'}: {err['msg']}" for err in exc.errors())
        raise ScenarioError(f"scenario {source}: {problems}") from exc
