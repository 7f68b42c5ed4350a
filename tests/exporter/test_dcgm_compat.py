"""--dcgm-compat: every field of dcgm-exporter's default counters with its type, unit and labels; the
generations; the Kubernetes pod labels. Readings are built by hand, so each field is checked against a
value we chose, converted by hand here (not by the catalog's own scale)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from common import catalog as c
from exporter.dcgm_compat import generation_of
from exporter.readings import GpmReading, GpuReading, MigReading, NodeReading
from exporter.render import families, render_text
from exporter.settings import ExporterSettings, SettingsError, parse
from exporter.snapshot import Snapshot

GIB = 2**30
DRIVER = "580.95.05"

# dcgm-exporter's etc/default-counters.csv as of 4.5.3-4.8.2 and its main branch: the uncommented fields.
DEFAULT_COUNTERS = (
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_RESERVED",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_DRIVER_VERSION",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "DCGM_FI_PROF_DRAM_ACTIVE",
    "DCGM_FI_PROF_PCIE_TX_BYTES",
    "DCGM_FI_PROF_PCIE_RX_BYTES",
)

# field -> (its type in dcgm-exporter's CSV, the value our reading below must give, in dcgm-exporter's unit)
EXPECTED: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_SM_CLOCK": ("gauge", 1980),  # MHz
    "DCGM_FI_DEV_MEM_CLOCK": ("gauge", 2619),  # MHz
    "DCGM_FI_DEV_MEMORY_TEMP": ("gauge", 54),  # °C
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", 61),  # °C
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", 412.5),  # W
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("counter", 987_654_321),  # mJ from 987654.321 J
    "DCGM_FI_PROF_PCIE_TX_BYTES": ("gauge", 3_500_000_000),  # bytes/s
    "DCGM_FI_PROF_PCIE_RX_BYTES": ("gauge", 1_250_000_000),  # bytes/s
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": ("counter", 3),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", 93),  # % from 0.93
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("gauge", 41),  # % from 0.41
    "DCGM_FI_DEV_ENC_UTIL": ("gauge", 25),  # % from 0.25
    "DCGM_FI_DEV_DEC_UTIL": ("gauge", 7),  # % from 0.07
    "DCGM_FI_DEV_XID_ERRORS": ("gauge", 79),  # the last XID
    "DCGM_FI_DEV_FB_FREE": ("gauge", 80 * 1024 - 61 * 1024 - 512),  # MiB
    "DCGM_FI_DEV_FB_USED": ("gauge", 61 * 1024 + 512),  # MiB
    "DCGM_FI_DEV_FB_RESERVED": ("gauge", 577),  # MiB
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("counter", 1),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("counter", 12),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("gauge", 1),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("gauge", 0.9),  # ratio
    "DCGM_FI_PROF_SM_ACTIVE": ("gauge", 0.8),
    "DCGM_FI_PROF_SM_OCCUPANCY": ("gauge", 0.3),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("gauge", 0.55),
    "DCGM_FI_PROF_DRAM_ACTIVE": ("gauge", 0.45),
}


def _gpu(index: int = 0, **extra: Any) -> GpuReading:
    known: dict[str, Any] = {
        "memory_total_bytes": 80 * GIB,
        "memory_used_bytes": 61 * GIB + 512 * 2**20,
        "utilization_ratio": 0.93,
        "memory_controller_ratio": 0.41,
        "power_watts": 412.5,
        "energy_joules": 987654.321,
        "temperature_celsius": 61,
        "memory_temperature_celsius": 54,
        "sm_clock_mhz": 1980,
        "memory_clock_mhz": 2619,
        "encoder_ratio": 0.25,
        "decoder_ratio": 0.07,
        "memory_reserved_bytes": 577 * 2**20,
        "pcie_replays_total": 3,
        "pcie_tx_bytes_per_second": 3.5e9,
        "pcie_rx_bytes_per_second": 1.25e9,
        "nvlink_bytes_total": 10**12,
        "remapped_rows_correctable": 12,
        "remapped_rows_uncorrectable": 1,
        "remapped_rows_pending": False,
        "row_remap_failed": True,
        "last_xid": 79,
        "gpm": GpmReading(
            sm_active=0.8, sm_occupancy=0.3, tensor_active=0.55, dram_bandwidth=0.45, graphics_active=0.9
        ),
    }
    known.update(extra)
    return GpuReading(index=index, uuid=f"GPU-{index:08d}", name="NVIDIA H100 80GB HBM3", up=True, **known)


def _mig_gpu(index: int) -> GpuReading:
    instances = tuple(
        MigReading(
            gpu_instance=gi,
            compute_instance=0,
            uuid=f"MIG-{index}-{gi}",
            profile="3g.40gb",
            memory_total_bytes=40 * GIB,
            memory_used_bytes=gi * GIB,
            gpm=GpmReading(sm_active=0.1 * gi, sm_occupancy=None, tensor_active=None, dram_bandwidth=None),
            processes=(),
        )
        for gi in (1, 2)
    )
    return _gpu(index, mig_mode=True, mig=instances, utilization_ratio=None, memory_controller_ratio=None)


def _snap(*gpus: GpuReading) -> Snapshot:
    return Snapshot(NodeReading(nvml_up=True, driver_version=DRIVER, timestamp=1.0, gpus=gpus), [], 0)


def _page(snap: Snapshot, generation: bool | str = True, pods: Any = None) -> str:
    return render_text(families(snap, hostname="node-a", dcgm_compat=generation, dcgm_pods=pods)).decode()


def _types(text: str) -> dict[str, str]:
    """What each ``# TYPE`` line declares, as Prometheus reads it (the name exactly as written)."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def _series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    # prometheus-client's parser renames the samples of a counter to <name>_total; the page itself does not
    return [(s.labels, s.value) for f in parse_text(text) if f.name == name for s in f.samples]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_field_has_dcgm_exporters_type_and_unit(name: str) -> None:
    text = _page(_snap(_gpu()))
    kind, value = EXPECTED[name]
    assert _types(text)[name] == kind
    assert not any(t.startswith(name + "_total") for t in _types(text))
    assert re.search(rf"^{name}{{[^}}]*}} ", text, re.M), "the sample keeps the field's exact name"
    [(labels, got)] = _series(text, name)
    assert got == pytest.approx(value)
    assert labels["DCGM_FI_DRIVER_VERSION"] == DRIVER and labels["Hostname"] == "node-a"
    assert labels["modelName"] == "NVIDIA H100 80GB HBM3" and labels["device"] == "nvidia0"


def test_the_help_texts_are_dcgm_exporters() -> None:
    text = _page(_snap(_gpu()))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    assert helps["DCGM_FI_DEV_SM_CLOCK"] == "SM clock frequency (in MHz)."
    assert helps["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "Total energy consumption since boot (in mJ)."
    assert helps["DCGM_FI_DEV_FB_RESERVED"] == "Framebuffer memory reserved (in MiB)."
    assert helps["DCGM_FI_DEV_XID_ERRORS"] == "Value of the last XID error encountered."


def test_an_unknown_reading_is_absent_never_zero() -> None:
    bare = GpuReading(index=0, uuid="GPU-0", name="NVIDIA A10", up=True)
    text = _page(_snap(bare))
    assert not [line for line in text.splitlines() if line.startswith("DCGM_FI")]
    assert not re.search(r"^# (HELP|TYPE) DCGM_FI", text, re.M)  # nor headers of a field without values
    # with only some fields known, exactly those are served
    some = GpuReading(index=0, uuid="GPU-0", name="NVIDIA A10", up=True, sm_clock_mhz=1410, row_remap_failed=False)
    text = _page(_snap(some))
    served = {line.split("{")[0] for line in text.splitlines() if line.startswith("DCGM_FI")}
    assert served == {"DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_ROW_REMAP_FAILURE"}
    assert _series(text, "DCGM_FI_DEV_ROW_REMAP_FAILURE")[0][1] == 0  # known: no failure


def test_every_default_counter_is_produced_or_listed_with_a_reason() -> None:
    produced = {f.metric.name for f in c.DCGM_FIELDS}
    listed = set(re.findall(r"DCGM_[A-Z0-9_]+", " ".join(c.DCGM_UNMAPPED)))
    for name in DEFAULT_COUNTERS:
        assert name in produced or name in listed or name in c.DCGM_LABELS, name
    assert all(why.strip() for why in c.DCGM_UNMAPPED.values())
    assert produced.isdisjoint(listed)  # never both


def test_mig_instances_carry_their_own_memory_and_activity_the_parent_its_device_fields() -> None:
    text = _page(_snap(_mig_gpu(3)))
    fb = {s[0]["GPU_I_ID"]: s[1] for s in _series(text, "DCGM_FI_DEV_FB_USED")}
    assert fb == {"1": 1024, "2": 2048}  # counted once: no parent series beside its instances
    sm = {s[0]["GPU_I_ID"]: s[1] for s in _series(text, "DCGM_FI_PROF_SM_ACTIVE")}
    assert sm == {"": 0.8, "1": pytest.approx(0.1), "2": pytest.approx(0.2)}
    temps = _series(text, "DCGM_FI_DEV_GPU_TEMP")
    assert [(labels["GPU_I_ID"], value) for labels, value in temps] == [("", 61)]
    assert not _series(text, "DCGM_FI_DEV_GPU_UTIL")  # N/A under MIG, absent


def test_generations_name_the_host_label_and_3x_types_pcie_as_counters() -> None:
    snap = _snap(_gpu())
    for generation, host in ((True, "Hostname"), ("4.x", "Hostname"), ("3.x", "Hostname"), ("next", "hostname")):
        labels = _series(_page(snap, generation), "DCGM_FI_DEV_GPU_TEMP")[0][0]
        assert labels.get(host) == "node-a", generation
        assert {"Hostname", "hostname"} - {host} & set(labels) == set(), generation
    old, new = _page(snap, "3.x"), _page(snap, "4.x")
    assert _types(old)["DCGM_FI_PROF_PCIE_TX_BYTES"] == "counter"
    assert _types(new)["DCGM_FI_PROF_PCIE_TX_BYTES"] == "gauge"
    assert "# HELP DCGM_FI_DEV_FB_USED Frame buffer memory used (in MB).\n" in old
    assert _series(old, "DCGM_FI_DEV_FB_USED") == _series(new, "DCGM_FI_DEV_FB_USED")  # same MiB values


def test_a_bad_generation_is_one_sentence_naming_the_allowed_ones() -> None:
    assert generation_of(False) is None and generation_of("") is None
    assert generation_of(True) == c.dcgm_generation(c.DCGM_DEFAULT_GENERATION)
    with pytest.raises(ValueError, match=r"^unknown dcgm-exporter generation '5\.x'; use one of 3\.x, 4\.x, next$"):
        generation_of("5.x")


@pytest.mark.parametrize(
    ("argv", "env", "value"),
    [
        (["--dcgm-compat"], {}, True),
        (["--dcgm-compat", "3.x"], {}, "3.x"),
        (["--dcgm-compat=next"], {}, "next"),
        ([], {"GPUATTR_DCGM_COMPAT": "next"}, "next"),
        ([], {"GPUATTR_DCGM_COMPAT": "1"}, True),
        (["--no-dcgm-compat"], {"GPUATTR_DCGM_COMPAT": "4.x"}, False),
        ([], {}, False),
    ],
)
def test_the_flag_takes_a_generation_and_bare_keeps_meaning_on(
    argv: list[str], env: dict[str, str], value: bool | str
) -> None:
    assert parse(ExporterSettings, argv, env).dcgm_compat == value


@pytest.mark.parametrize(
    ("argv", "env", "where"),
    [(["--dcgm-compat", "4.9"], {}, "--dcgm-compat"), ([], {"GPUATTR_DCGM_COMPAT": "v4"}, "GPUATTR_DCGM_COMPAT")],
)
def test_a_bad_flag_value_names_the_flag_and_the_allowed_values(
    argv: list[str], env: dict[str, str], where: str
) -> None:
    with pytest.raises(SettingsError) as err:
        parse(ExporterSettings, argv, env)
    assert str(err.value).startswith(f"{where}: expected true or false, or a dcgm-exporter generation (3.x, 4.x, next)")
    assert "\n" not in str(err.value)


@dataclass(frozen=True)
class Placed:
    gpu_uuid: str
    mig_instance: str
    namespace: str
    pod: str
    container: str


def test_kubernetes_mode_labels_each_pods_devices_and_copies_a_shared_gpu_per_pod() -> None:
    snap = _snap(_gpu(0), _gpu(1), _gpu(2), _mig_gpu(3))
    pods = [
        Placed("GPU-00000000", "", "ml", "trainer-0", "pytorch"),  # a whole GPU
        Placed("GPU-00000001", "", "web", "chat-a", "vllm"),  # time-sliced between two pods
        Placed("GPU-00000001", "", "web", "chat-b", "vllm"),
        Placed("GPU-00000003", "2", "search", "embedder", "server"),  # a MIG instance
    ]
    text = _page(snap, True, pods)
    temps = {(s[0]["gpu"], s[0]["pod"]): s[1] for s in _series(text, "DCGM_FI_DEV_GPU_TEMP")}
    assert temps == {("0", "trainer-0"): 61, ("1", "chat-a"): 61, ("1", "chat-b"): 61, ("2", ""): 61, ("3", ""): 61}
    fb = {
        (s[0]["GPU_I_ID"], s[0]["namespace"], s[0]["pod"], s[0]["container"])
        for s in _series(text, "DCGM_FI_DEV_FB_USED")
    }
    assert ("2", "search", "embedder", "server") in fb and ("1", "", "", "") in fb
    # a per-pod query finds every pod holding a GPU
    util: dict[tuple[str, str], float] = {}
    for labels, value in _series(text, "DCGM_FI_DEV_GPU_UTIL"):
        key = (labels["namespace"], labels["pod"])
        util[key] = util.get(key, 0) + value
    assert {k for k in util if k[1]} == {("ml", "trainer-0"), ("web", "chat-a"), ("web", "chat-b")}
    # the gpuattr_* series are the same with or without pods
    ours = [line for line in text.splitlines() if line.startswith("gpuattr_")]
    assert ours == [line for line in _page(snap, True).splitlines() if line.startswith("gpuattr_")]


def test_without_kubernetes_mode_there_are_no_pod_labels() -> None:
    text = _page(_snap(_gpu()))
    [(labels, _)] = _series(text, "DCGM_FI_DEV_GPU_TEMP")
    assert not {"namespace", "pod", "container"} & set(labels)
    # in Kubernetes mode with no allocation the labels are there, empty (absent to PromQL)
    [(labels, _)] = _series(_page(_snap(_gpu()), True, []), "DCGM_FI_DEV_GPU_TEMP")
    assert (labels["namespace"], labels["pod"], labels["container"]) == ("", "", "")
