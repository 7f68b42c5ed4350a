"""Check the exporter's per-process readings against workloads of known behaviour on a real NVIDIA GPU.

Needs a machine with an NVIDIA GPU, its driver and PyTorch with CUDA (not needed for ``--help``). It
starts three PyTorch processes on one GPU (default 0), each renaming itself with ``prctl(PR_SET_NAME)``
before it touches CUDA, so the exporter's ``process`` label tells them apart outside Kubernetes:

- ``gpuattr-idle``: holds a known allocation (``torch.empty``, default 4 GiB) and does nothing;
- ``gpuattr-compute``: a bf16 matmul loop (default 8192×8192), compute-bound;
- ``gpuattr-copy``: device-to-device copies of a large tensor (default 2 GiB), bandwidth-bound.

Then it runs the exporter against the real NVML (``gpuattr exporter --listen 127.0.0.1:PORT --interval 2``),
scrapes it for ``--duration`` seconds and compares the per-process series (``gpuattr_container_gpu_memory_bytes``,
``..._sm_active_ratio``, ``..._memory_bandwidth_ratio``, medians over the scrapes after a warm-up) with the
truth: idle SM ≈ 0; compute SM high; copy bandwidth high and higher than compute's; memory between what
PyTorch reserved and that plus a CUDA-context allowance (both are reported). The three processes time-slice
the GPU, so "high" thresholds are set below 100 %.

It also compares the device-health series (clocks, temperatures, reserved memory, row remapping) with what
``nvidia-smi --query-gpu`` reads at the same moment, and checks that a field nvidia-smi has no number for is
absent, not 0.

Writes a Markdown report to ``bench/out/real-gpu.md`` and prints it; exits 1 if a check fails, 2 if it
could not run. It changes no GPU setting (clocks, power limits, MIG) and never resets the GPU.

    python bench/real_gpu_check.py [--gpu 0] [--duration 30] [--idle-gib 4]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
HOST = "127.0.0.1"
PR_SET_NAME = 15  # <linux/prctl.h>
PR_SET_PDEATHSIG = 1
GIB = 2**30
MIB = 2**20
ROLES = ("idle", "compute", "copy")


def comm_of(role: str) -> str:
    return f"gpuattr-{role}"  # at most 15 bytes: the kernel's TASK_COMM_LEN


# -- the child processes ----------------------------------------------------------------------------------
def _prctl(option: int, value: int | bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    arg: Any = ctypes.c_char_p(value) if isinstance(value, bytes) else ctypes.c_ulong(value)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def run_child(role: str, gpu: int, status_path: Path, args: argparse.Namespace) -> int:
    """One workload; writes its status (PID, what PyTorch reserved, throughput) to ``status_path`` each second."""
    # Name first, before any thread exists, so every thread (and /proc/<pid>/comm) carries it.
    _prctl(PR_SET_NAME, comm_of(role).encode())
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # do not outlive the check
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    deadline = time.monotonic() + args.duration + 300  # give up on our own if nobody stops us

    import torch  # type: ignore[import-not-found, unused-ignore]

    device = torch.device("cuda", gpu)
    torch.cuda.set_device(device)
    work_done = 0.0  # FLOPs (compute) or bytes moved, read + write (copy)
    per_step = 0.0
    step: Callable[[], Any] | None = None
    if role == "idle":
        held = torch.empty(int(args.idle_gib * GIB), dtype=torch.uint8, device=device)
        held.fill_(1)  # touch it
    elif role == "compute":
        n = args.matmul_n
        a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        c = torch.empty(n, n, dtype=torch.bfloat16, device=device)
        per_step = 2.0 * n**3
        step = lambda: torch.matmul(a, b, out=c)  # noqa: E731
    else:
        nbytes = int(args.copy_mib * MIB)
        src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(7)
        dst = torch.empty_like(src)
        per_step = 2.0 * nbytes  # read + write
        step = lambda: dst.copy_(src)  # noqa: E731
    torch.cuda.synchronize(device)
    started = time.monotonic()
    last_write = 0.0
    while not stop and time.monotonic() < deadline:
        if step is None:
            time.sleep(0.2)
        else:
            for _ in range(args.steps_per_sync):
                step()
            torch.cuda.synchronize(device)  # bounded queue; honest throughput
            work_done += per_step * args.steps_per_sync
        now = time.monotonic()
        if now - last_write >= 1.0:
            last_write = now
            elapsed = now - started
            status = {
                "role": role,
                "pid": os.getpid(),
                "comm": Path(f"/proc/{os.getpid()}/comm").read_text(encoding="utf-8").strip(),
                "reserved_bytes": int(torch.cuda.memory_reserved(device)),
                "allocated_bytes": int(torch.cuda.memory_allocated(device)),
                "elapsed_s": elapsed,
                "rate": work_done / elapsed if elapsed > 0 else 0.0,  # FLOP/s or B/s
            }
            tmp = status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(status), encoding="utf-8")
            tmp.replace(status_path)
    return 0


# -- the exporter and its series --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def exporter_command(port: int, interval_s: float) -> list[str]:
    beside = Path(sys.executable).parent / "gpuattr"
    exe = str(beside) if beside.exists() else shutil.which("gpuattr")
    base = [exe] if exe else [sys.executable, "-m", "gpuattr"]
    return [*base, "exporter", "--listen", f"{HOST}:{port}", "--interval", f"{interval_s:g}", "--log-level", "info"]


def scrape(port: int) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET /metrics answered {resp.status}: {body[:200]!r}")
        return body.decode("utf-8")
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the exporter exited with {proc.returncode} (see its log)")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            try:
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.5)
    raise RuntimeError(f"the exporter was not ready on port {port} within {timeout_s:.0f}s")


@dataclass
class Series:
    """Per-process values over the scrapes (one list per metric)."""

    memory: list[float] = field(default_factory=list)
    sm: list[float] = field(default_factory=list)
    bandwidth: list[float] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)


def parse_usage(text: str, gpu: int, wanted: set[str]) -> tuple[dict[str, dict[str, float]], set[str]]:
    """{process: {metric name: value}} on ``gpu`` for the wanted processes, and every process label seen there."""
    from prometheus_client.parser import text_string_to_metric_families

    from common import catalog

    names = {
        catalog.CONTAINER_MEMORY.name: "memory",
        catalog.CONTAINER_KERNEL_ACTIVE.name: "sm",  # time its kernels ran: what the thresholds below mean
        catalog.CONTAINER_MEMORY_BANDWIDTH.name: "bandwidth",
    }
    out: dict[str, dict[str, float]] = {}
    seen: set[str] = set()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            key = names.get(sample.name)
            if key is None or sample.labels.get("gpu") != str(gpu):
                continue
            process = sample.labels.get("process", "")
            seen.add(process)
            if process in wanted:
                out.setdefault(process, {})[key] = float(sample.value)
                if key != "memory" and "source" in sample.labels:
                    out[process][f"source:{sample.labels['source']}"] = 1.0
    return out, seen


# -- the check ----------------------------------------------------------------------------------------------
@dataclass
class Check:
    what: str
    ok: bool
    detail: str


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / GIB:.3f} GiB"


def evaluate(
    series: dict[str, Series], status: dict[str, dict[str, Any]], args: argparse.Namespace
) -> tuple[list[Check], list[str]]:
    """The checks, and a Markdown table of what was read per process."""
    checks: list[Check] = []
    rows = [
        "| process | PID | NVML memory (exporter) | PyTorch reserved | difference | SM active | memory bandwidth "
        "| source | workload rate |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    med: dict[str, dict[str, float | None]] = {}
    for role in ROLES:
        name = comm_of(role)
        s = series.get(name, Series())
        st = status.get(role, {})
        m = {"memory": _median(s.memory), "sm": _median(s.sm), "bandwidth": _median(s.bandwidth)}
        med[role] = m
        reserved = float(st["reserved_bytes"]) if "reserved_bytes" in st else None
        diff = m["memory"] - reserved if m["memory"] is not None and reserved is not None else None
        rate = st.get("rate")
        if role == "idle":
            rate_text = "-"
        elif rate is None:
            rate_text = "n/a"
        elif role == "compute":
            rate_text = f"{rate / 1e12:.1f} TFLOP/s"
        else:
            rate_text = f"{rate / 1e9:.0f} GB/s (read + write)"
        rows.append(
            f"| {name} | {st.get('pid', '?')} | {_gib(m['memory'])} | {_gib(reserved)} | "
            f"{'n/a' if diff is None else f'{diff / MIB:+.0f} MiB'} | {_pct(m['sm'])} | {_pct(m['bandwidth'])} | "
            f"{', '.join(sorted(s.sources)) or 'n/a'} | {rate_text} |"
        )
        allowance = args.context_allowance_mib * MIB
        if m["memory"] is None or reserved is None:
            checks.append(Check(f"{name}: memory reported", False, "no memory series for this process"))
        else:
            ok = reserved <= m["memory"] <= reserved + allowance
            checks.append(
                Check(
                    f"{name}: memory within PyTorch reserved … reserved + {args.context_allowance_mib:g} MiB",
                    ok,
                    f"NVML {_gib(m['memory'])}, reserved {_gib(reserved)}, context ≈ {diff / MIB:.0f} MiB"
                    if diff is not None
                    else "",
                )
            )
    if "idle" in med:
        want = args.idle_gib * GIB
        got = med["idle"]["memory"]
        checks.append(
            Check(
                f"{comm_of('idle')}: holds at least its {args.idle_gib:g} GiB allocation",
                got is not None and got >= want,
                f"{_gib(got)} vs {_gib(want)}",
            )
        )

    def check(what: str, value: float | None, ok: bool, detail: str = "") -> None:
        checks.append(Check(what, value is not None and ok, detail or _pct(value)))

    idle_sm, idle_bw, compute_sm = med["idle"]["sm"], med["idle"]["bandwidth"], med["compute"]["sm"]
    copy_bw, compute_bw = med["copy"]["bandwidth"], med["compute"]["bandwidth"]
    check(f"{comm_of('idle')}: SM active ≤ {_pct(args.idle_max)}", idle_sm, (idle_sm or 0) <= args.idle_max)
    check(f"{comm_of('idle')}: memory bandwidth ≤ {_pct(args.idle_max)}", idle_bw, (idle_bw or 0) <= args.idle_max)
    check(
        f"{comm_of('compute')}: SM active ≥ {_pct(args.compute_sm_min)}",
        compute_sm,
        (compute_sm or 0) >= args.compute_sm_min,
    )
    check(
        f"{comm_of('copy')}: memory bandwidth ≥ {_pct(args.copy_bw_min)}",
        copy_bw,
        (copy_bw or 0) >= args.copy_bw_min,
    )
    check(
        f"{comm_of('copy')}: memory bandwidth above {comm_of('compute')}'s",
        copy_bw if compute_bw is not None else None,
        (copy_bw or 0) > (compute_bw or 0),
        f"{_pct(copy_bw)} vs {_pct(compute_bw)}",
    )
    return checks, rows


# nvidia-smi --query-gpu field, the exporter's series, factor from nvidia-smi's unit to the series', tolerance
# (absolute, in the series' unit). Clocks and temperatures move between two reads; the rest must match exactly.
HEALTH_FIELDS: tuple[tuple[str, str, float, float], ...] = (
    ("clocks.current.sm", "GPU_SM_CLOCK", 1e6, 150e6),
    ("clocks.current.memory", "GPU_MEMORY_CLOCK", 1e6, 150e6),
    ("temperature.gpu", "GPU_TEMPERATURE", 1.0, 3.0),
    ("temperature.memory", "GPU_MEMORY_TEMPERATURE", 1.0, 3.0),
    ("memory.reserved", "GPU_MEMORY_RESERVED", float(MIB), float(MIB)),
    ("remapped_rows.pending", "GPU_ROW_REMAP_PENDING", 1.0, 0.0),
    ("remapped_rows.failure", "GPU_ROW_REMAP_FAILED", 1.0, 0.0),
)


def smi_health(gpu: int) -> dict[str, str | None]:
    """Each of ``HEALTH_FIELDS`` as nvidia-smi prints it (read-only queries, one field a call, so a field this
    driver's nvidia-smi does not know costs only itself, and is left out)."""
    out: dict[str, str | None] = {}
    for name, *_ in HEALTH_FIELDS:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["nvidia-smi", f"--id={gpu}", f"--query-gpu={name}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            out[name] = done.stdout.strip()
    return out


def _smi_number(text: str | None) -> float | None:
    """nvidia-smi's value as a number: "Yes"/"No" as 1/0, "[N/A]" or "[Not Supported]" as None."""
    if text is None:
        return None
    if text in ("Yes", "No"):
        return 1.0 if text == "Yes" else 0.0
    try:
        return float(text)
    except ValueError:
        return None


def health_checks(exposition: str, gpu: int, smi: dict[str, str | None]) -> list[Check]:
    """The exporter's device-health series on ``gpu`` against nvidia-smi's reading of the same moment: equal
    within each field's tolerance; absent exactly where nvidia-smi has no number (unknown is never served)."""
    from prometheus_client.parser import text_string_to_metric_families

    from common import catalog

    served: dict[str, float] = {}
    for fam in text_string_to_metric_families(exposition):
        for sample in fam.samples:
            if sample.labels.get("gpu") == str(gpu):
                served[sample.name] = float(sample.value)
    checks: list[Check] = []
    for field_name, metric_attr, factor, tolerance in HEALTH_FIELDS:
        metric = getattr(catalog, metric_attr).name
        if field_name not in smi:  # this nvidia-smi cannot be asked: nothing to judge against
            checks.append(Check(f"{metric}: not judged", True, f"nvidia-smi does not answer --query-gpu={field_name}"))
            continue
        want = _smi_number(smi[field_name])
        got = served.get(metric)
        if want is None:
            checks.append(
                Check(
                    f"{metric}: absent where nvidia-smi has no {field_name}",
                    got is None,
                    f"served {got:g}; nvidia-smi {smi.get(field_name)!r}" if got is not None else "absent",
                )
            )
            continue
        want *= factor
        checks.append(
            Check(
                f"{metric} = nvidia-smi {field_name} (± {tolerance:g})",
                got is not None and abs(got - want) <= tolerance,
                f"served {'absent' if got is None else f'{got:g}'}, nvidia-smi {want:g}",
            )
        )
    return checks


def gpu_name(gpu: int) -> str:
    """The GPU's name through nvidia-smi (read-only query), for the report."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["nvidia-smi", f"--id={gpu}", "--query-gpu=name,driver_version,mig.mode.current", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return done.stdout.strip()
    return "unknown (nvidia-smi not available)"


def rss_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, MiB."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def child_command(role: str, status_dir: Path, args: argparse.Namespace) -> list[str]:
    """This script again, as one workload."""
    options = {
        "--gpu": args.gpu,
        "--duration": args.duration,
        "--idle-gib": args.idle_gib,
        "--matmul-n": args.matmul_n,
        "--copy-mib": args.copy_mib,
        "--steps-per-sync": args.steps_per_sync,
    }
    flat = [str(x) for pair in options.items() for x in pair]
    return [sys.executable, str(Path(__file__).resolve()), "--child", role, "--status-dir", str(status_dir), *flat]


def run_check(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print("real_gpu_check: PyTorch is not installed in this interpreter (pip install torch)", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gpuattr-real-gpu-"))
    children: dict[str, subprocess.Popen[bytes]] = {}
    exporter: subprocess.Popen[bytes] | None = None
    logs: list[Any] = []
    exporter_rss: dict[str, float] = {}
    health: list[Check] = []
    try:
        for role in ROLES:
            log = (OUT / f"real-gpu-{role}.log").open("wb")
            logs.append(log)
            children[role] = subprocess.Popen(
                child_command(role, workdir, args),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # wait until each child has its allocation and has run for a moment
        status: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + args.startup_timeout_s
        while len(status) < len(ROLES):
            for role, proc in children.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{comm_of(role)} exited with {proc.returncode}; see bench/out/real-gpu-{role}.log"
                    )
                path = workdir / f"{role}.json"
                if path.exists():
                    status[role] = json.loads(path.read_text(encoding="utf-8"))
            if time.monotonic() > deadline:
                missing = sorted(set(ROLES) - set(status))
                raise RuntimeError(f"{missing} did not start within {args.startup_timeout_s:.0f}s")
            time.sleep(0.5)
        for role, st in status.items():
            if st.get("comm") != comm_of(role):
                print(f"warning: {role} child has comm {st.get('comm')!r}, not {comm_of(role)!r}", file=sys.stderr)

        port = args.port or free_port()
        log = (OUT / "real-gpu-exporter.log").open("wb")
        logs.append(log)
        exporter = subprocess.Popen(
            exporter_command(port, args.interval), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        wait_ready(exporter, port, timeout_s=60)

        wanted = {comm_of(r) for r in ROLES}
        series = {name: Series() for name in wanted}
        seen: set[str] = set()
        warmup_until = time.monotonic() + 2 * args.interval + 1  # first intervals may predate a steady state
        end = time.monotonic() + args.duration
        scrapes = 0
        while time.monotonic() < end:
            time.sleep(args.interval)
            if time.monotonic() < warmup_until:
                continue
            values, labels = parse_usage(scrape(port), args.gpu, wanted)
            seen |= labels
            scrapes += 1
            for name, per in values.items():
                if "memory" in per:
                    series[name].memory.append(per["memory"])
                if "sm" in per:
                    series[name].sm.append(per["sm"])
                if "bandwidth" in per:
                    series[name].bandwidth.append(per["bandwidth"])
                series[name].sources |= {k.split(":", 1)[1] for k in per if k.startswith("source:")}
        # device health: the exporter's series against nvidia-smi, read back to back
        health = health_checks(scrape(port), args.gpu, smi_health(args.gpu))
        exporter_rss = rss_mib(exporter.pid)
        for role in ROLES:  # the latest status: reserved memory and throughput over the whole run
            path = workdir / f"{role}.json"
            if path.exists():
                status[role] = json.loads(path.read_text(encoding="utf-8"))
    finally:
        if exporter is not None:
            terminate(exporter)
        for proc in children.values():
            terminate(proc)
        for log in logs:
            log.close()
        shutil.rmtree(workdir, ignore_errors=True)

    checks, rows = evaluate(series, status, args)
    checks += health
    others = sorted(seen - wanted)
    lines = [
        "# Exporter readings vs known workloads on a real GPU",
        "",
        f"GPU {args.gpu}: {gpu_name(args.gpu)}; exporter interval {args.interval:g} s; {scrapes} scrapes over "
        f"{args.duration:g} s after a {2 * args.interval + 1:g} s warm-up; values are medians over the scrapes. "
        "The three processes time-slice the GPU.",
        "",
        f"Exporter RSS at the end: {exporter_rss.get('VmRSS', float('nan')):.1f} MiB "
        f"(peak {exporter_rss.get('VmHWM', float('nan')):.1f} MiB), real NVML.",
        "",
        *rows,
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *(f"| {c.what} | {'pass' if c.ok else 'FAIL'} | {c.detail} |" for c in checks),
        "",
    ]
    if others:
        lines += [f"Other processes on GPU {args.gpu} during the check: {', '.join(others)}.", ""]
    report = "\n".join(lines)
    (OUT / "real-gpu.md").write_text(report, encoding="utf-8")
    print(report)
    print(f"wrote {OUT / 'real-gpu.md'}")
    return 0 if all(c.ok for c in checks) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n", 1)[0],
        epilog="Needs an NVIDIA GPU and PyTorch with CUDA; changes no GPU setting.",
    )
    parser.add_argument("--gpu", type=int, default=0, help="GPU index to run the workloads on (default 0)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to scrape the exporter (default 30)")
    parser.add_argument("--interval", type=float, default=2.0, help="exporter sampling interval, s (default 2)")
    parser.add_argument("--port", type=int, default=0, help="exporter port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--idle-gib", type=float, default=4.0, help="GiB the idle process allocates (default 4)")
    parser.add_argument("--matmul-n", type=int, default=8192, help="matrix size of the bf16 matmul (default 8192)")
    parser.add_argument("--copy-mib", type=float, default=2048.0, help="MiB copied per step (default 2048)")
    parser.add_argument("--steps-per-sync", type=int, default=10, help="GPU steps queued between synchronisations")
    parser.add_argument(
        "--context-allowance-mib",
        type=float,
        default=1024.0,
        help="NVML memory may exceed PyTorch's reserved memory by this much: the CUDA context, cuBLAS (default 1024)",
    )
    parser.add_argument("--idle-max", type=float, default=0.05, help="highest SM/bandwidth ratio for idle (0.05)")
    parser.add_argument("--compute-sm-min", type=float, default=0.3, help="lowest SM ratio for compute (0.3)")
    parser.add_argument("--copy-bw-min", type=float, default=0.2, help="lowest bandwidth ratio for copy (0.2)")
    parser.add_argument("--startup-timeout-s", type=float, default=180.0, help="wait for the workloads to start")
    parser.add_argument("--child", choices=ROLES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--status-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        if args.status_dir is None:
            raise SystemExit("--child needs --status-dir")
        return run_child(args.child, args.gpu, args.status_dir / f"{args.child}.json", args)
    try:
        return run_check(args)
    except RuntimeError as exc:
        print(f"real_gpu_check: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
