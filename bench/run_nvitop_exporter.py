"""Run nvitop-exporter against the simulated NVML of a scenario (for the side-by-side benchmark).

Loads the scenario, puts ``simulator.fake_nvml`` under the ``pynvml`` binding (in this process, as
``gpuattr exporter --simulate`` does in its own), then calls nvitop-exporter's entry point
(``nvitop_exporter.cli:main``) with the arguments after ``--``. NVML functions that nvitop looks up
and the fake does not export (the binding raises FunctionNotFound, nvitop serves N/A) are recorded and
written as JSON to ``--report`` (with the fake's call counts) whenever a new one shows up, on SIGUSR1,
and when the process is terminated.

    .venv/bin/python bench/run_nvitop_exporter.py --scenario bench/out/scale-8x256.yaml \\
        --report bench/out/nvitop-nvml.json -- --bind-address 127.0.0.1 --port 9100 --interval 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pynvml

from simulator import fake_nvml
from simulator.clock import SimClock
from simulator.scenario import load_scenario

# NVML return code -> its name in the header (not through nvmlErrorString, which the fake lacks)
_CODE_NAMES = {
    value: name.removeprefix("NVML_ERROR_") if name != "NVML_SUCCESS" else "SUCCESS"
    for name, value in vars(pynvml).items()
    if (name.startswith("NVML_ERROR_") or name == "NVML_SUCCESS") and isinstance(value, int)
}


class CallRecorder:
    """Wraps the binding's function lookup: records missing functions and (optionally) error codes."""

    def __init__(self, report: Path | None, *, trace_codes: bool) -> None:
        self.report = report
        self.trace_codes = trace_codes
        self.missing: dict[str, int] = {}  # NVML function -> lookups that found nothing
        self.codes: dict[str, dict[str, int]] = {}  # NVML function -> {return code name: calls}
        self.fake: fake_nvml.FakeNvmlLibrary | None = None
        self._lock = threading.RLock()  # write() also runs from a signal handler on the main thread
        self._lookup: Callable[[str], Any] = pynvml._nvmlGetFunctionPointer

    def install(self) -> None:
        pynvml._nvmlGetFunctionPointer = self._get_function_pointer

    def _get_function_pointer(self, name: str) -> Any:
        try:
            fn = self._lookup(name)
        except pynvml.NVMLError as exc:
            if exc.value == pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:
                with self._lock:
                    new = name not in self.missing
                    self.missing[name] = self.missing.get(name, 0) + 1
                if new:
                    self.write()
            raise
        if not self.trace_codes:
            return fn
        return self._traced(name, fn)

    def _traced(self, name: str, fn: Callable[..., int]) -> Callable[..., int]:
        def call(*args: Any) -> int:
            ret = fn(*args)
            code = _CODE_NAMES.get(ret, f"code {ret}")
            with self._lock:
                per = self.codes.setdefault(name, {})
                per[code] = per.get(code, 0) + 1
            return ret

        return call

    def write(self) -> None:
        if self.report is None:
            return
        with self._lock:
            data = {
                "missing_functions": dict(sorted(self.missing.items())),
                "return_codes": {k: dict(v) for k, v in sorted(self.codes.items())},
                "fake_calls": dict(sorted((self.fake.calls if self.fake else {}).items())),
            }
        tmp = self.report.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.report)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, sep, theirs = (
        (argv[: argv.index("--")], "--", argv[argv.index("--") + 1 :]) if "--" in argv else (argv, "", [])
    )
    del sep
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="arguments after -- go to nvitop-exporter (e.g. --bind-address, --port, --interval)",
    )
    parser.add_argument("--scenario", required=True, type=Path, help="scenario YAML")
    parser.add_argument("--sim-start", type=float, default=0.0, help="scenario second to start at")
    parser.add_argument("--report", type=Path, default=None, help="JSON file for NVML lookups that failed")
    parser.add_argument("--trace-codes", action="store_true", help="also count NVML return codes per function (slower)")
    args = parser.parse_args(ours)

    scenario = load_scenario(args.scenario)
    recorder = CallRecorder(args.report, trace_codes=args.trace_codes)
    recorder.fake = fake_nvml.install(scenario, SimClock(offset=args.sim_start))
    recorder.install()

    def on_term(signum: int, frame: FrameType | None) -> None:
        recorder.write()
        sys.stderr.flush()
        os._exit(0)  # nvitop's collect loop never returns; leave without waiting for its threads

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        recorder.write()  # the benchmark reads the fake's call counts at the edges of its windows

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)

    from nvitop_exporter.cli import main as nvitop_exporter_main

    sys.argv = ["nvitop-exporter", *theirs]
    try:
        return int(nvitop_exporter_main())
    finally:
        recorder.write()


if __name__ == "__main__":
    raise SystemExit(main())
