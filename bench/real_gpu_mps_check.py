"""The two cases a real GPU showed the exporter getting wrong, checked on a real NVIDIA GPU: tiny kernels, MPS.

Needs a machine with an NVIDIA GPU (Hopper or newer for GPM), its driver, ``nvidia-smi``,
``nvidia-cuda-mps-control`` and PyTorch with CUDA; not needed for ``--help``. Outside Kubernetes each process
is told apart by its command name, set with ``prctl(PR_SET_NAME)`` before CUDA starts.

1. **Tiny kernels.** ``gpuattr-tiny`` loops ``x.add_(1)`` on a one-element tensor. Asserted: its memory equals
   nvidia-smi's for its PID; its kernel time (``gpuattr_container_gpu_kernel_active_ratio``) is within 5 points
   of ``nvidia-smi pmon``'s median ``sm``; its SM activity (``gpuattr_container_gpu_sm_active_ratio``, from GPM)
   is at most 2 %.
2. **MPS.** An MPS control daemon is started with its own pipe and log folders (``CUDA_MPS_PIPE_DIRECTORY``,
   ``CUDA_MPS_LOG_DIRECTORY`` in a temporary folder), then ``gpuattr-mpsbusy`` (a bf16 matmul loop) and
   ``gpuattr-mpsidle`` (holds memory) as its clients. Asserted: each client's memory equals nvidia-smi's; no
   client is ever reported idle (kernel time at or below 5 %, or no activity series without
   ``gpuattr_container_gpu_activity_unknown``) while the busy one computes; the MPS server is no owner; the
   GPU's MPS kernel time is above 50 %. The daemon is stopped (``quit``) at the end, whatever happened.

It changes no GPU setting (compute mode, clocks, power, MIG) and never resets the GPU. Writes
``bench/out/real-gpu-mps.md``, prints it, exits 1 if a check fails and 2 if it could not run.

    python bench/real_gpu_mps_check.py [--gpu 0] [--duration 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from real_gpu_check import (
    PR_SET_NAME,
    PR_SET_PDEATHSIG,
    ROOT,
    Check,
    _median,
    _prctl,
    exporter_command,
    free_port,
    scrape,
    wait_ready,
)

OUT = ROOT / "bench" / "out"
GIB = 2**30
MIB = 2**20
TINY, BUSY, IDLE = "gpuattr-tiny", "gpuattr-mpsbusy", "gpuattr-mpsidle"
COMMS = {"tiny": TINY, "mpsbusy": BUSY, "mpsidle": IDLE}


# -- the workloads ----------------------------------------------------------------------------------------
def run_child(role: str, gpu: int, status_path: Path, seconds: float) -> int:
    """One workload; writes its PID and what it did to ``status_path`` each second."""
    _prctl(PR_SET_NAME, COMMS[role].encode())
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    import torch  # type: ignore[import-not-found, unused-ignore]

    device = torch.device("cuda", gpu)
    torch.cuda.set_device(device)
    held: Any = None
    if role == "tiny":
        held = torch.zeros(1, device=device)
    elif role == "mpsbusy":
        a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
        b = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
        held = (a, b, torch.empty_like(a))
    else:
        held = torch.empty(int(2.5 * GIB), dtype=torch.uint8, device=device).fill_(1)
    torch.cuda.synchronize(device)
    deadline, last = time.monotonic() + seconds + 300, 0.0
    while not stop and time.monotonic() < deadline:
        if role == "tiny":
            for _ in range(1000):
                held.add_(1)  # one-element kernels: launch-bound
            torch.cuda.synchronize(device)
        elif role == "mpsbusy":
            for _ in range(10):
                torch.matmul(held[0], held[1], out=held[2])
            torch.cuda.synchronize(device)
        else:
            time.sleep(0.2)
        if time.monotonic() - last >= 1.0:
            last = time.monotonic()
            tmp = status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"role": role, "pid": os.getpid()}), encoding="utf-8")
            tmp.replace(status_path)
    return 0


# -- what nvidia-smi says -----------------------------------------------------------------------------------
def parse_pmon(text: str) -> dict[int, list[float]]:
    """pid -> the ``sm`` column of ``nvidia-smi pmon -s u`` as ratios (a ``-`` row: no sample, skipped)."""
    out: dict[int, list[float]] = {}
    for line in text.splitlines():
        cells = line.split()
        if not cells or cells[0].startswith("#") or len(cells) < 4 or not cells[1].isdigit():
            continue
        if re.fullmatch(r"\d+", cells[3]):
            out.setdefault(int(cells[1]), []).append(int(cells[3]) / 100)
    return out


def smi_memory(gpu: int) -> dict[int, int]:
    """pid -> bytes of GPU memory, from ``nvidia-smi --query-compute-apps`` (MiB as the driver reports it)."""
    text = subprocess.run(
        ["nvidia-smi", "-i", str(gpu), "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    out = {}
    for line in text.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().isdigit():
            out[int(pid)] = int(mib) * MIB
    return out


# -- what the exporter says, and the checks ----------------------------------------------------------------
@dataclass
class Seen:
    """Per process (command name) over the scrapes."""

    memory: list[float] = field(default_factory=list)
    kernel: list[float] = field(default_factory=list)
    sms: list[float] = field(default_factory=list)
    unknown: int = 0  # scrapes in which it was marked activity_unknown
    silent: int = 0  # scrapes with memory but neither an activity series nor an unknown mark
    mps_kernel: list[float] = field(default_factory=list)


def read_scrapes(pages: Iterable[str], gpu: int) -> tuple[dict[str, Seen], set[str]]:
    """Per-process series of each exposition page on ``gpu``, and every owner label seen holding memory."""
    from prometheus_client.parser import text_string_to_metric_families

    from common import catalog as c

    seen: dict[str, Seen] = {}
    owners: set[str] = set()
    gpu_mps: list[float] = []
    for page in pages:
        per: dict[str, dict[str, float]] = {}
        for fam in text_string_to_metric_families(page):
            for s in fam.samples:
                if s.labels.get("gpu") != str(gpu):
                    continue
                if s.name == c.GPU_MPS_KERNEL_ACTIVE.name:
                    gpu_mps.append(float(s.value))
                    continue
                who = s.labels.get("process") or f"{s.labels.get('namespace')}/{s.labels.get('pod')}"
                key = {
                    c.CONTAINER_MEMORY.name: "memory",
                    c.CONTAINER_KERNEL_ACTIVE.name: "kernel",
                    c.CONTAINER_SM_ACTIVE.name: "sms",
                    c.CONTAINER_ACTIVITY_UNKNOWN.name: "unknown",
                }.get(s.name)
                if key is not None and not (key == "sms" and s.labels.get("source") != "gpm"):
                    per.setdefault(who, {})[key] = float(s.value)
        for who, values in per.items():
            one = seen.setdefault(who, Seen())
            if "memory" in values:
                owners.add(who)
                one.memory.append(values["memory"])
            if "kernel" in values:
                one.kernel.append(values["kernel"])
            if "sms" in values:
                one.sms.append(values["sms"])
            if "unknown" in values:
                one.unknown += 1
            elif "memory" in values and "kernel" not in values and "sms" not in values:
                one.silent += 1
    for one in seen.values():
        one.mps_kernel = list(gpu_mps)
    return seen, owners


def check_tiny(seen: dict[str, Seen], pmon: dict[int, list[float]], memory: dict[int, int], pid: int) -> list[Check]:
    me = seen.get(TINY, Seen())
    held, smi = _median(me.memory), memory.get(pid)
    kernel, pm, sms = _median(me.kernel), _median(pmon.get(pid, [])), _median(me.sms)
    return [
        Check(
            "tiny kernels: memory equals nvidia-smi's",
            held is not None and smi is not None and held == smi,
            f"exporter {held}, nvidia-smi {smi} bytes",
        ),
        Check(
            "tiny kernels: kernel time within 5 points of pmon",
            kernel is not None and pm is not None and abs(kernel - pm) <= 0.05,
            f"exporter {kernel}, pmon median {pm}",
        ),
        Check("tiny kernels: SM activity at most 2 %", sms is not None and sms <= 0.02, f"GPM-derived {sms}"),
    ]


def check_mps(
    seen: dict[str, Seen],
    owners: set[str],
    memory: dict[int, int],
    pids: dict[str, int],
    clients: tuple[str, str] = (BUSY, IDLE),
) -> list[Check]:
    """``clients``: the busy client's command name, then the idle one's."""
    busy = clients[0]
    checks = []
    for comm in clients:
        me = seen.get(comm, Seen())
        held, smi = _median(me.memory), memory.get(pids.get(comm, -1))
        checks.append(
            Check(
                f"MPS: {comm} memory equals nvidia-smi's",
                held is not None and smi is not None and held == smi,
                f"exporter {held}, nvidia-smi {smi} bytes",
            )
        )
        idle = [k for k in me.kernel if k <= 0.05]
        checks.append(
            Check(
                f"MPS: {comm} never reported idle while {busy} computes",
                bool(me.memory) and not idle and me.silent == 0,
                f"{len(idle)} scrapes with kernel time <= 5 %, {me.silent} without activity or an unknown mark, "
                f"{me.unknown} marked unknown, kernel time {me.kernel[:3]}",
            )
        )
    servers = sorted(o for o in owners if o.startswith("nvidia-cuda-mps"))
    checks.append(Check("MPS: the server is no owner", not servers, f"owners holding memory: {sorted(owners)}"))
    mps = _median(seen.get(busy, Seen()).mps_kernel)
    checks.append(Check("MPS: the GPU's MPS kernel time is above 50 %", mps is not None and mps > 0.5, f"{mps}"))
    return checks


# -- running it -----------------------------------------------------------------------------------------------
def _start(
    role: str, gpu: int, work: Path, seconds: float, *, env: dict[str, str], logs: list[Any]
) -> subprocess.Popen[bytes]:
    log = (OUT / f"real-gpu-mps-{role}.log").open("wb")
    logs.append(log)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--gpu", str(gpu), "--work", str(work)]
    return subprocess.Popen([*cmd, "--duration", f"{seconds:g}"], env=env, stdout=log, stderr=subprocess.STDOUT)


def _pid(work: Path, role: str, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{COMMS[role]} exited with {proc.returncode}; see bench/out/real-gpu-mps-{role}.log")
        path = work / f"{role}.json"
        if path.exists():
            return int(json.loads(path.read_text(encoding="utf-8"))["pid"])
        time.sleep(0.5)
    raise RuntimeError(f"{COMMS[role]} did not start within {timeout_s:.0f}s")


def _observe(gpu: int, seconds: float, interval: float, with_pmon: bool) -> tuple[list[str], str, dict[int, int]]:
    """Run the exporter on the real NVML and scrape it for ``seconds`` (and pmon beside it)."""
    port = free_port()
    log = (OUT / "real-gpu-mps-exporter.log").open("ab")
    exporter = subprocess.Popen(exporter_command(port, interval), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    pmon: subprocess.Popen[str] | None = None
    try:
        wait_ready(exporter, port, timeout_s=60)
        time.sleep(2 * interval + 1)  # the first interval may predate a steady state
        if with_pmon:
            count = str(int(seconds))
            pmon = subprocess.Popen(
                ["nvidia-smi", "pmon", "-i", str(gpu), "-s", "u", "-c", count], stdout=subprocess.PIPE, text=True
            )
        pages, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(interval)
            pages.append(scrape(port))
        memory = smi_memory(gpu)
        pmon_text = pmon.communicate(timeout=seconds + 30)[0] if pmon is not None else ""
        return pages, pmon_text, memory
    finally:
        if pmon is not None and pmon.poll() is None:
            pmon.kill()
        exporter.terminate()
        exporter.wait(timeout=30)
        log.close()


def run_check(args: argparse.Namespace) -> int:
    import importlib.util

    missing = [n for n in ("nvidia-smi", "nvidia-cuda-mps-control") if shutil.which(n) is None]
    if importlib.util.find_spec("torch") is None or missing:
        print(f"real_gpu_mps_check: needs PyTorch and {', '.join(missing) or 'the NVIDIA tools'}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpuattr-real-gpu-mps-"))
    logs: list[Any] = []
    checks: list[Check] = []
    children: list[subprocess.Popen[bytes]] = []
    mps_env = {
        **os.environ,
        "CUDA_MPS_PIPE_DIRECTORY": str(work / "mps-pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(work / "mps-log"),
    }
    daemon_started = False
    try:
        # 1. tiny kernels, no MPS
        tiny = _start("tiny", args.gpu, work, args.duration + 60, env=dict(os.environ), logs=logs)
        children.append(tiny)
        tiny_pid = _pid(work, "tiny", tiny, args.startup_timeout_s)
        pages, pmon_text, memory = _observe(args.gpu, args.duration, args.interval, with_pmon=True)
        seen, _ = read_scrapes(pages, args.gpu)
        checks += check_tiny(seen, parse_pmon(pmon_text), memory, tiny_pid)
        tiny.terminate()
        tiny.wait(timeout=30)
        # 2. MPS: a daemon of our own, its two clients
        for sub in ("mps-pipe", "mps-log"):
            (work / sub).mkdir()
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env=mps_env, check=True, timeout=30)
        daemon_started = True
        pids = {}
        for role in ("mpsbusy", "mpsidle"):
            proc = _start(role, args.gpu, work, args.duration + 60, env=mps_env, logs=logs)
            children.append(proc)
            pids[COMMS[role]] = _pid(work, role, proc, args.startup_timeout_s)
        pages, _, memory = _observe(args.gpu, args.duration, args.interval, with_pmon=False)
        seen, owners = read_scrapes(pages, args.gpu)
        checks += check_mps(seen, owners, memory, pids)
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        if daemon_started:  # stop the daemon we started, and only it (its own pipe folder)
            subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", env=mps_env, timeout=30, check=False)
        for log in logs:
            log.close()
        shutil.rmtree(work, ignore_errors=True)
    report = "\n".join(
        [
            "# Tiny kernels and MPS on a real GPU",
            "",
            f"GPU {args.gpu}; exporter interval {args.interval:g} s; {args.duration:g} s of scrapes per case.",
            "",
            "| check | result | detail |",
            "|---|---|---|",
            *(f"| {c.what} | {'pass' if c.ok else 'FAIL'} | {c.detail} |" for c in checks),
            "",
        ]
    )
    (OUT / "real-gpu-mps.md").write_text(report, encoding="utf-8")
    print(report)
    return 0 if checks and all(c.ok for c in checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", type=int, default=0, help="GPU index (default 0)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of scrapes per case (default 20)")
    parser.add_argument("--interval", type=float, default=2.0, help="exporter sampling interval, s (default 2)")
    parser.add_argument("--startup-timeout-s", type=float, default=180.0, help="wait for a workload to start")
    parser.add_argument("--child", choices=sorted(COMMS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return run_child(args.child, args.gpu, args.work / f"{args.child}.json", args.duration)
    try:
        return run_check(args)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"real_gpu_mps_check: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
