"""``gpuattr <subcommand>``: the exporter, the demo, and generators of committed artefacts.

Subcommands import their part lazily, so ``gpuattr exporter`` loads neither pandas nor the
attribution package.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common.envflags import annotate, env_name, parse_args
from common.quoting import InputError
from exporter.settings import ExporterSettings, SettingsError, add_arguments, from_sources

DEFAULT_SCENARIO = "scenarios/h100-inference-node.yaml"

# Where the demo starts from other values than the exporter (a flag or GPUATTR_* variable still wins)
DEMO_DEFAULTS: dict[str, object] = {
    "simulate": DEFAULT_SCENARIO,
    "listen": "127.0.0.1:9835",
    "interval": 2.0,
    "kubernetes": True,  # the simulated node brings its own API server and kubelet socket
    "dcgm_exporter_url": "simulated",  # a simulated dcgm-exporter beside the simulated node
    "sim_start": 60.0,  # past the servers' start-up, so memory shows what they hold
}


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _wait_for_signal(seconds: float | None) -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait(seconds)


def cmd_exporter(args: argparse.Namespace) -> int:
    from exporter.app import build

    settings: ExporterSettings = from_sources(ExporterSettings, args)
    _logging(settings.log_level)
    run_for = args.run_for if args.run_for is not None else _env_float("GPUATTR_RUN_FOR")
    exporter = build(settings)
    exporter.start()
    print(f"gpuattr exporter serving {exporter.server.url}", flush=True)
    try:
        _wait_for_signal(run_for)
    finally:
        exporter.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.app import build
    from simulator.demo import next_steps, summary, wait_for_samples

    settings: ExporterSettings = from_sources(ExporterSettings, args)
    if settings.simulate is None:
        settings.simulate = DEFAULT_SCENARIO
    for name, value in DEMO_DEFAULTS.items():
        if name != "simulate" and getattr(args, name) is None and env_name(name) not in os.environ:
            setattr(settings, name, value)
    _logging(settings.log_level)
    run_for = args.run_for if args.run_for is not None else _env_float("GPUATTR_RUN_FOR")
    exporter = build(settings)
    exporter.start()
    try:
        metrics = wait_for_samples(exporter.server.url, samples=3, timeout_s=30)
        print(f"Simulated node {settings.simulate!r}: what the exporter sees\n")
        print(summary(metrics))
        servers = exporter.simulation.vllm if exporter.simulation is not None else []
        if servers:
            print("\n" + _attribution_of(servers, exporter.server.url))
        print(f"\nScrape it: curl -s {exporter.server.url}")
        if run_for != 0:
            print("\n" + next_steps(servers, exporter.server.url, command=_invoked_as()))
            print(
                "Serving until Ctrl-C." if run_for is None else f"Serving for {run_for:.0f}s.",
                flush=True,
            )
            _wait_for_signal(run_for)
    finally:
        exporter.stop()
    return 0


def _invoked_as() -> str:
    """How this command was run, for commands to copy: ``.venv/bin/gpuattr`` under ``make demo``, else ``gpuattr``."""
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 if Path(argv0).name == "gpuattr" else "gpuattr"


def _attribution_of(servers: list[Any], exporter_url: str) -> str:
    """The attribution job in one-shot mode on the simulated vLLM servers (their /metrics and start-up logs)."""
    from attribution.collect import add_logs
    from attribution.job import run
    from attribution.oneshot import from_endpoints
    from attribution.report import terminal
    from common.fetch import fetch

    by_pod = {(s.namespace, s.pod): s for s in servers}

    def read_log(namespace: str, pod: str) -> str | None:
        server = by_pod.get((namespace, pod))
        if server is None:
            return None
        return fetch(server.logs_url, timeout_s=5).body.decode()

    specs = [f"{s.namespace}/{s.pod}={s.metrics_url}" for s in servers if getattr(s, "rank", 0) == 0]
    collected = from_endpoints(specs, exporter_url)
    add_logs(collected, None, read=read_log)
    return terminal(run(collected, window="5m", headroom=0.2, price=2.5))


def cmd_docs(args: argparse.Namespace) -> int:
    from gpuattr.docs import render_metrics_doc

    text = render_metrics_doc()
    target = Path(args.docs_output)
    with _writable("--output", target):
        if args.check:
            current = target.read_text(encoding="utf-8") if target.exists() else ""
            if current != text:
                print(f"{target} is stale: run `gpuattr docs` and commit the result", file=sys.stderr)
                return 1
            return 0
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from alerts.config import AlertConfigError, load_config
    from alerts.rules import stale, write

    try:
        config = load_config(args.alerts_config)
    except AlertConfigError as exc:
        print(f"gpuattr: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.alerts_out_dir)
    with _writable("--out-dir", out_dir, folder=True):
        if args.check:
            outdated = stale(out_dir, config)
            if outdated:
                print(f"stale in {out_dir}: {', '.join(outdated)}; run `gpuattr alerts` and commit", file=sys.stderr)
                return 1
            return 0
        written = write(out_dir, config)
    for path in written:
        print(f"wrote {path}")
    return 0


@contextlib.contextmanager
def _writable(flag: str, path: Path, *, folder: bool = False) -> Iterator[None]:
    """A file or folder that cannot be read or written (a file where a folder goes, a folder under /proc):
    one sentence naming the flag and the path, not a traceback."""
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{flag} {str(path)!r}: is a file, not a folder")
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise InputError(f"{flag} {str(path)!r}: cannot write there: {reason}{where}") from None


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None


def cmd_dashboards(args: argparse.Namespace) -> int:
    from dashboards.build import stale, write

    out_dir = Path(args.dashboards_out_dir)
    with _writable("--out-dir", out_dir, folder=True):
        if args.check:
            outdated = stale(out_dir)
            if outdated:
                print(
                    f"stale in {out_dir}: {', '.join(outdated)}; run `gpuattr dashboards` and commit", file=sys.stderr
                )
                return 1
            return 0
        written = write(out_dir)
    for path in written:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuattr", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, summary) in PASSTHROUGH.items():
        sub.add_parser(name, help=summary + f" (gpuattr {name} --help)", add_help=False)

    exp = sub.add_parser("exporter", help="run the node exporter (real NVML, or --simulate a scenario)")
    add_arguments(exp, ExporterSettings)
    exp.add_argument(
        "--run-for",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until signalled) [env GPUATTR_RUN_FOR]",
    )
    exp.set_defaults(func=cmd_exporter)

    demo = sub.add_parser(
        "demo", help=f"run the exporter on a simulated node ({DEFAULT_SCENARIO}) and show what it sees"
    )
    add_arguments(demo, ExporterSettings, DEMO_DEFAULTS)
    demo.add_argument(
        "--run-for",
        type=float,
        default=None,
        help="keep serving this many seconds after the summary (0: exit at once; default: until signalled) "
        "[env GPUATTR_RUN_FOR]",
    )
    demo.set_defaults(func=cmd_demo)

    docs = sub.add_parser("docs", help="generate docs/metrics.md from the metric catalog")
    docs.add_argument(
        "--output", dest="docs_output", metavar="FILE", default="docs/metrics.md", help="where the reference goes"
    )
    docs.add_argument("--check", action="store_true", help="fail if the file differs from what would be generated")
    docs.set_defaults(func=cmd_docs)
    alerts = sub.add_parser("alerts", help="generate the Prometheus recording and alerting rules")
    alerts.add_argument(
        "--config", dest="alerts_config", metavar="FILE", help="YAML overriding thresholds, windows and severities"
    )
    alerts.add_argument(
        "--out-dir", dest="alerts_out_dir", metavar="DIR", default="alerts", help="where the rule files go"
    )
    alerts.add_argument("--check", action="store_true", help="fail if the files differ from what would be generated")
    alerts.set_defaults(func=cmd_alerts)

    dash = sub.add_parser("dashboards", help="generate the Grafana dashboards (grafana-foundation-sdk)")
    dash.add_argument(
        "--out-dir",
        dest="dashboards_out_dir",
        metavar="DIR",
        default="dashboards/generated",
        help="where the dashboard JSON goes",
    )
    dash.add_argument("--check", action="store_true", help="fail if the files differ from what would be generated")
    dash.set_defaults(func=cmd_dashboards)
    for name in (*ENV_FLAGS, "exporter", "demo"):
        annotate(_subparsers(parser)[name])  # each flag's default and variable in its help
    return parser


def version() -> str:
    """The installed package's version; ``unknown`` when run from a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("gpu-attribution")
    except PackageNotFoundError:
        return "unknown"


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand, its help annotated as ``gpuattr NAME --help`` shows it."""
    if name in PASSTHROUGH:
        import importlib

        module, _, factory = PARSERS[name].partition(":")
        built: argparse.ArgumentParser = getattr(importlib.import_module(module), factory)()
        return annotate(built)
    return _subparsers(build_parser())[name]


# Subcommands of the attribution package: their own parsers, imported only when asked for (so the
# exporter never loads pandas).
PASSTHROUGH = {
    "attribute": ("attribution.job", "split each vLLM server's GPU memory and recommend what to give back"),
    "model-memory": ("attribution.model_memory", "KV bytes per token and weights of a model, and how many tokens fit"),
    "vllm-log": ("attribution.vllm_log", "read what a vLLM start-up log says about memory"),
    "review": ("attribution.review", "the capacity review: allocation against use, waste, SLOs, consolidation"),
}


# The parser of each subcommand above (for the help checks; ``main`` of each module builds its own)
PARSERS = {
    "attribute": "attribution.job:build_parser",
    "model-memory": "attribution.model_memory.cli:build_parser",
    "vllm-log": "attribution.vllm_log:build_parser",
    "review": "attribution.review.cli:build_parser",
}


# Subcommands whose flags are read through common.envflags (the exporter and the demo read theirs from
# ExporterSettings, field by field).
ENV_FLAGS = ("docs", "alerts", "dashboards")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        module = importlib.import_module(PASSTHROUGH[argv[0]][0])
        return int(module.main(argv[1:]))
    parser = build_parser()
    # docs, alerts, dashboards: every flag also a GPUATTR_* variable; the exporter's settings read theirs
    chosen = _subparsers(parser).get(argv[0]) if argv and argv[0] in ENV_FLAGS else None
    args = parser.parse_args(argv) if chosen is None else parse_args(chosen, argv[1:])
    try:
        return int(args.func(args))
    except InputError as exc:  # bad settings, a bad scenario file: one sentence naming it
        print(f"gpuattr: {exc}", file=sys.stderr)
        return 2
