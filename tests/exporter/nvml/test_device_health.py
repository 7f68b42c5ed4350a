"""Device health through the real binding over the simulated driver: clocks, memory temperature, codecs,
reserved memory, PCIe, NVLink, row remapping and XID events, and what stays unknown when the driver says N/A."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from common import catalog as c
from exporter.readings import GpuReading, NodeReading
from exporter.sampler import Sampler, SamplerOptions
from exporter.snapshot import CommandNameResolver
from tests.conftest import Sim, one_gpu

MiB = 2**20


def _read(sim: Sim, samples: int = 1, step: float = 5.0) -> NodeReading:
    node = sim.reader.read()
    for _ in range(samples - 1):
        sim.clock.advance(step)
        node = sim.reader.read()
    return node


def test_clocks_follow_the_load_and_the_memory_clock_stays_at_its_p0_value(simulate: Callable[..., Sim]) -> None:
    busy = {"pid": 1, "memory": "1GiB", "sm": {"points": [[0, 0.0], [9.99, 0.0], [10, 0.9]]}}
    sim = simulate(one_gpu(busy), start=5)
    idle = sim.reader.read().gpus[0]
    sim.clock.advance(10)
    loaded = sim.reader.read().gpus[0]
    assert (idle.sm_clock_mhz, loaded.sm_clock_mhz) == (345.0, 1980.0)  # H100 SXM: idle, then full boost
    assert idle.memory_clock_mhz == loaded.memory_clock_mhz == 2619.0


def test_memory_temperature_reserved_memory_and_codecs_are_read(simulate: Callable[..., Sim]) -> None:
    raw = one_gpu({"pid": 1, "memory": "1GiB", "sm": 0.9, "mem_bw": 0.8})
    raw["gpus"][0].update({"reserved_memory": "600MiB", "memory_temperature_c": 30})
    sim = simulate(raw, start=60)
    gpu = _read(sim, 2).gpus[0]
    assert gpu.memory_temperature_celsius == 50.0  # 30 °C at idle, 25 °C more at 80 % memory traffic
    assert gpu.memory_reserved_bytes == 600 * MiB
    assert (gpu.encoder_ratio, gpu.decoder_ratio) == (0.0, 0.0)  # a compute card: idle, known, not unknown
    assert gpu.pcie_replays_total == 0
    assert gpu.pcie_rx_bytes_per_second is not None and gpu.pcie_rx_bytes_per_second > 500 * 1024


def test_a_call_the_driver_does_not_support_leaves_its_value_unknown_and_is_asked_once(
    simulate: Callable[..., Sim],
) -> None:
    raw = one_gpu({"pid": 1, "memory": "1GiB"})
    raw["gpus"][0]["unsupported"] = ["nvmlDeviceGetEncoderUtilization", "NVML_FI_DEV_MEMORY_TEMP"]
    sim = simulate(raw)
    node = _read(sim, 3)
    gpu = node.gpus[0]
    assert gpu.encoder_ratio is None and gpu.decoder_ratio == 0.0
    assert gpu.memory_temperature_celsius is None
    assert gpu.nvlink_bytes_total is not None  # the other fields of the same call are still read
    assert sim.fake.calls["nvmlDeviceGetEncoderUtilization"] == 1
    assert node.errors[("nvmlDeviceGetEncoderUtilization", "NotSupported")] == 1
    assert node.errors[("nvmlDeviceGetFieldValues(NVML_FI_DEV_MEMORY_TEMP)", "NotSupported")] == 1


def test_nvlink_traffic_is_counted_on_sxm_parts_and_unknown_on_pcie_cards(simulate: Callable[..., Sim]) -> None:
    raw = {
        "name": "links",
        "gpus": [{"index": 0}, {"index": 1, "model": "NVIDIA H100 PCIe"}],
        "processes": [{"pid": 1, "name": "a", "gpus": [0, 1], "memory": "1GiB", "sm": 0.5}],
    }
    sim = simulate(raw)
    first = sim.reader.read()
    sim.clock.advance(10)
    second = sim.reader.read()
    sxm0, sxm1 = first.gpus[0].nvlink_bytes_total, second.gpus[0].nvlink_bytes_total
    assert sxm0 is not None and sxm1 is not None
    # 40 GB/s each way at full kernel time: half of that, both directions, over 10 s (the driver counts KiB)
    assert abs((sxm1 - sxm0) - 2 * 0.5 * 40e9 * 10) < 2 * 1024
    assert first.gpus[1].nvlink_bytes_total is None and second.gpus[1].nvlink_bytes_total is None
    assert sim.fake.calls["nvmlDeviceGetFieldValues"] == 4  # the PCIe card is still asked for its memory temperature


def _rows(g: GpuReading) -> tuple[object, ...]:
    return (g.remapped_rows_correctable, g.remapped_rows_uncorrectable, g.remapped_rows_pending, g.row_remap_failed)


def test_row_remapping_is_read_as_the_driver_reports_it_and_unknown_on_gddr_cards(
    simulate: Callable[..., Sim],
) -> None:
    raw = {
        "name": "remap",
        "gpus": [
            {"index": 0, "row_remap": [{"at": 10, "correctable": 3, "uncorrectable": 1, "pending": True}]},
            {"index": 1, "model": "NVIDIA L4"},
        ],
        "processes": [],
    }
    sim = simulate(raw, start=5)
    before = sim.reader.read().gpus
    sim.clock.advance(10)
    after = sim.reader.read().gpus
    assert _rows(before[0]) == (0, 0, False, False)
    assert _rows(after[0]) == (3, 1, True, False)
    assert _rows(after[1]) == (None, None, None, None)
    assert after[1].memory_temperature_celsius is None  # GDDR: no memory sensor either


def test_xid_errors_are_counted_by_code_from_nvml_events(simulate: Callable[..., Sim]) -> None:
    xids = [{"at": 7, "xid": 13}, {"at": 8, "xid": 13}, {"at": 12, "xid": 48}]
    sim = simulate(one_gpu({"pid": 1, "memory": "1GiB"}, gpus=[{"index": 0, "xid": xids}]), start=5)
    quiet = sim.reader.read().gpus[0]
    assert quiet.xid_events_known and quiet.xid_counts == () and quiet.last_xid is None
    sim.clock.advance(5)
    first = sim.reader.read().gpus[0]
    assert first.xid_counts == ((13, 2),) and first.last_xid == 13
    sim.clock.advance(5)
    node = sim.reader.read()
    gpu = node.gpus[0]
    assert gpu.xid_counts == ((13, 2), (48, 1)) and gpu.xid_errors_total == 3 and gpu.last_xid == 48
    assert not any(call == "nvmlEventSetWait_v2" for call, _code in node.errors)  # a timeout is "no event"
    assert sim.fake.calls["nvmlDeviceRegisterEvents"] == 1


def test_each_xid_code_is_logged_once_however_often_it_comes(
    simulate: Callable[..., Sim], caplog: pytest.LogCaptureFixture
) -> None:
    xids = [{"at": 6 + i / 10, "xid": 13} for i in range(30)] + [{"at": 8, "xid": 48}]
    sim = simulate(one_gpu(gpus=[{"index": 0, "xid": xids}]), start=5)
    with caplog.at_level(logging.WARNING, logger="gpuattr.nvml"):
        gpu = _read(sim, 2).gpus[0]
    assert gpu.xid_counts == ((13, 30), (48, 1))
    logged = [r.getMessage() for r in caplog.records if "XID" in r.getMessage()]
    assert len(logged) == 2 and "XID 13" in logged[0] and "XID 48" in logged[1]


def test_an_xid_before_the_agent_registered_is_not_counted(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu(gpus=[{"index": 0, "xid": [{"at": 1, "xid": 79}]}]), start=5)
    assert sim.reader.read().gpus[0].xid_counts == ()


def test_the_xid_of_a_gpu_falling_off_the_bus_is_counted_while_it_is_down(simulate: Callable[..., Sim]) -> None:
    gpus = [{"index": 0}, {"index": 1, "lost_at": 10, "xid": [{"at": 10, "xid": 79}]}]
    sim = simulate({"name": "lost", "gpus": gpus, "processes": []}, start=5)
    sim.reader.read()
    sim.clock.advance(5)
    lost = sim.reader.read().gpus[1]
    assert not lost.up
    assert lost.xid_counts == ((79, 1),) and lost.xid_events_known


def test_xid_counts_stay_unknown_when_the_driver_cannot_deliver_events(simulate: Callable[..., Sim]) -> None:
    gpus = [{"index": 0, "unsupported": ["nvmlDeviceRegisterEvents"], "xid": [{"at": 6, "xid": 79}]}]
    sim = simulate(one_gpu(gpus=gpus), start=5)
    node = _read(sim, 3)
    gpu = node.gpus[0]
    assert not gpu.xid_events_known and gpu.xid_counts == () and gpu.last_xid is None
    assert sim.fake.calls["nvmlDeviceRegisterEvents"] == 1  # not asked again
    assert sim.fake.calls["nvmlEventSetFree"] == 1  # the set it could not use is given back
    assert node.errors[("nvmlDeviceRegisterEvents", "NotSupported")] == 1


def test_xid_counts_become_unknown_when_the_event_wait_is_not_supported(simulate: Callable[..., Sim]) -> None:
    gpus = [{"index": 0, "unsupported": ["nvmlEventSetWait_v2"], "xid": [{"at": 6, "xid": 79}]}]
    sim = simulate(one_gpu(gpus=gpus), start=5)
    node = _read(sim, 3)
    assert not node.gpus[0].xid_events_known and node.gpus[0].xid_counts == ()
    assert node.errors[("nvmlEventSetWait_v2", "NotSupported")] == 1
    assert sim.fake.calls["nvmlEventSetWait_v2"] == 1  # not asked again


def test_event_sets_are_freed_at_shutdown(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu(gpus=[{"index": 0}, {"index": 1}]))
    sim.reader.read()
    sim.reader.shutdown()
    assert sim.fake.calls["nvmlEventSetCreate"] == 2 and sim.fake.calls["nvmlEventSetFree"] == 2


def test_gpm_graphics_activity_is_read_beside_sm_activity(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu({"pid": 1, "memory": "1GiB", "sm": 0.8, "sm_fraction": 0.5}), start=10)
    gpm = _read(sim, 2).gpus[0].gpm
    assert gpm is not None
    assert (gpm.graphics_active, gpm.sm_active) == (0.8, 0.4)  # engine busy 80 % of the time, half the SMs


def _exposition(sim: Sim) -> str:
    sampler = Sampler(sim.reader, CommandNameResolver(nvml_name=sim.reader.process_name), SamplerOptions())
    sampler.sample_once()
    assert sampler.exposition is not None
    return sampler.exposition.text.decode()


def _series(text: str, metric: c.Metric) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(metric.name + "{")]


def test_what_the_driver_does_not_give_is_absent_from_the_exposition_never_zero(simulate: Callable[..., Sim]) -> None:
    gpus = [
        {"index": 0, "row_remap": [{"uncorrectable": 2, "pending": True}]},
        {"index": 1, "model": "NVIDIA L4", "unsupported": ["nvmlDeviceRegisterEvents"]},
    ]
    sim = simulate({"name": "mixed", "gpus": gpus, "processes": []})
    text = _exposition(sim)
    uuid0, uuid1 = sim.scenario.gpu_uuid(0), sim.scenario.gpu_uuid(1)
    for metric in (c.GPU_MEMORY_TEMPERATURE, c.GPU_NVLINK_BYTES, c.GPU_REMAPPED_ROWS, c.GPU_ROW_REMAP_PENDING):
        series = _series(text, metric)
        assert any(uuid0 in line for line in series), metric.name
        assert not any(uuid1 in line for line in series), metric.name  # the L4 has none of them
    assert f'{c.GPU_REMAPPED_ROWS.name}{{gpu="0",gpu_uuid="{uuid0}",kind="uncorrectable"}} 2.0' in text
    assert f'{c.GPU_ROW_REMAP_PENDING.name}{{gpu="0",gpu_uuid="{uuid0}"}} 1.0' in text
    assert f'{c.GPU_SM_CLOCK.name}{{gpu="1",gpu_uuid="{uuid1}"}} 2.1e+08' in text  # the L4 idles at 210 MHz


def test_the_xid_count_of_a_gpu_that_fell_off_the_bus_is_served_while_it_is_down(simulate: Callable[..., Sim]) -> None:
    gpus = [{"index": 0, "lost_at": 10, "xid": [{"at": 10, "xid": 79}, {"at": 6, "xid": 13}]}]
    sim = simulate({"name": "lost", "gpus": gpus, "processes": []}, start=5)
    sim.reader.read()
    sim.clock.advance(5)
    text = _exposition(sim)
    uuid = sim.scenario.gpu_uuid(0)
    assert f'{c.GPU_UP.name}{{gpu="0",gpu_uuid="{uuid}"}} 0.0' in text
    assert _series(text, c.GPU_XID_ERRORS) == [
        f'{c.GPU_XID_ERRORS.name}{{gpu="0",gpu_uuid="{uuid}",xid="13"}} 1.0',
        f'{c.GPU_XID_ERRORS.name}{{gpu="0",gpu_uuid="{uuid}",xid="79"}} 1.0',
    ]
    assert _series(text, c.GPU_SM_CLOCK) == []  # nothing else of a GPU that is down


@pytest.mark.parametrize("dcgm_compat", [False, True])
def test_pcie_throughput_is_asked_only_for_dcgm_exporters_pcie_fields(dcgm_compat: bool) -> None:
    """nvmlDeviceGetPcieThroughput holds a GPU's reader thread about 20 ms per direction on a real driver, and
    only --dcgm-compat serves what it gives: without it the agent never asks."""
    import pynvml

    from exporter.app import build
    from exporter.settings import ExporterSettings
    from tests.conftest import ROOT

    settings = ExporterSettings(
        simulate=str(ROOT / "scenarios" / "h100-inference-node.yaml"),
        listen="127.0.0.1:0",
        interval=60,
        sim_start=60,
        dcgm_compat=dcgm_compat,
    )
    exporter = build(settings)
    exporter.start()  # takes the first sample
    try:
        exporter.sampler.sample_once()
        calls = dict(pynvml.nvmlLib.calls)
        snapshot = exporter.sampler.snapshot
        assert snapshot is not None
        gpus = snapshot.reading.gpus
    finally:
        exporter.stop()
    assert ("nvmlDeviceGetPcieThroughput" in calls) is dcgm_compat
    assert all((g.pcie_tx_bytes_per_second is not None) is dcgm_compat for g in gpus)
    assert calls["nvmlDeviceGetPcieReplayCounter"] >= len(gpus)  # the rest of device health is read either way
