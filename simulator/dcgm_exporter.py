"""A simulated dcgm-exporter for the simulated node: its ``/metrics`` page, computed from the scenario.

Values are what DCGM's profiling fields would read over the last second of scenario time on each GPU
and MIG instance, in the page layouts of dcgm-exporter (``style``): ``"3.3"`` (releases to date: ``Hostname``)
and ``"next"`` (its main branch, which renamed that label ``hostname``, NVIDIA/dcgm-exporter#655). Both keep
``DCGM_FI_DRIVER_VERSION``, utilisation in % and framebuffer in MiB: no release has changed those yet. Faults:
serve nothing, answer slowly, or answer garbage during scenario windows.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from simulator.fake_nvml import FakeNvmlLibrary, _Target
from simulator.scenario import DcgmExporterSpec

_PROF = (
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "kernel", "Ratio of time the graphics engine is active."),
    ("DCGM_FI_PROF_SM_ACTIVE", "sm", "The ratio of cycles an SM has at least 1 warp assigned."),
    ("DCGM_FI_PROF_SM_OCCUPANCY", "occupancy", "The ratio of number of warps resident on an SM."),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "tensor", "Ratio of cycles the tensor (HMMA) pipe is active."),
    (
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "dram",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
    ),
)


def render_page(fake: FakeNvmlLibrary, spec: DcgmExporterSpec, hostname: str) -> str:
    scenario, t = fake.scenario, fake.clock.now()
    host_label = "hostname" if spec.style == "next" else "Hostname"
    lines: list[str] = []
    scopes: list[tuple[dict[str, str], _Target]] = []
    for gpu in scenario.gpus:
        if fake._lost(gpu.index):
            continue  # DCGM drops a GPU that fell off the bus
        base = {
            "gpu": str(gpu.index),
            "UUID": scenario.gpu_uuid(gpu.index),
            "pci_bus_id": f"00000000:{0x18 + gpu.index:02X}:00.0",
            "device": f"nvidia{gpu.index}",
            "modelName": gpu.model,
            host_label: hostname,
            "DCGM_FI_DRIVER_VERSION": scenario.node.driver_version,
        }
        if gpu.mig:
            for inst in gpu.mig:
                scopes.append(
                    ({**base, "GPU_I_PROFILE": inst.profile, "GPU_I_ID": str(inst.gi)}, _Target(gpu.index, inst.gi))
                )
        else:
            scopes.append((base, _Target(gpu.index, None)))

    def labels(d: dict[str, str]) -> str:
        return ",".join(f'{k}="{v}"' for k, v in d.items())

    lines += ["# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).", "# TYPE DCGM_FI_DEV_GPU_UTIL gauge"]
    for lbl, target in scopes:
        if target.gi is None:
            kernel = fake._activity(target, max(0.0, t - 1), t)["kernel"]
            lines.append(f"DCGM_FI_DEV_GPU_UTIL{{{labels(lbl)}}} {round(kernel * 100)}")
    lines += ["# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).", "# TYPE DCGM_FI_DEV_FB_USED gauge"]
    for lbl, target in scopes:
        _, used = fake._memory(target, t)
        lines.append(f"DCGM_FI_DEV_FB_USED{{{labels(lbl)}}} {used // 2**20}")
    for name, key, doc in _PROF:
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge"]
        for lbl, target in scopes:
            value = fake._activity(target, max(0.0, t - 1), t)[key]
            lines.append(f"{name}{{{labels(lbl)}}} {value:.6f}")
    return "\n".join(lines) + "\n"


class SimDcgmExporter:
    """Serves the simulated page on 127.0.0.1 (a real HTTP server, as dcgm-exporter on :9400 would be)."""

    def __init__(self, fake: FakeNvmlLibrary, spec: DcgmExporterSpec, hostname: str) -> None:
        self.fake, self.spec, self.hostname = fake, spec, hostname
        source = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                t = source.fake.clock.now()
                if any(a <= t < b for a, b in source.spec.down_between):
                    self.send_error(503, "dcgm-exporter is restarting")
                    return
                if any(a <= t < b for a, b in source.spec.slow_between):
                    time.sleep(source.spec.slow_seconds)
                if any(a <= t < b for a, b in source.spec.garbage_between):
                    body = b'DCGM_FI_PROF_SM_ACTIVE{UUID="GPU-x" 0.5 oops\n\x00\x01'
                else:
                    body = render_page(source.fake, source.spec, source.hostname).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sim-dcgm-exporter", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
