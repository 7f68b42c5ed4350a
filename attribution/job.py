"""``gpuattr attribute``: the attribution job, from inputs to the split, recommendations and outputs."""

from __future__ import annotations

import argparse
import json
import logging
import math
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from attribution.collect import ESSENTIAL, Collected, add_logs, add_model_configs, from_prometheus, queries
from attribution.health import Health, InputsFailedError, check
from attribution.prometheus import PrometheusClient
from attribution.recommend import Item, Packing, costs, pack, recommend
from attribution.report import Result, families, terminal, to_json, write_files
from attribution.split import FAILED_START_COLUMNS, WORKER_COLUMNS, split, table
from common.checks import http_url, output_folder
from common.envflags import Parser, parse_args
from common.families import Families
from common.fetch import FetchError, push_handler
from common.files import OutputError
from common.net import host_port
from common.quoting import InputError
from common.units import parse_duration

log = logging.getLogger("gpuattr.attribution")
JOB = "gpuattr-attribution"
HEALTH_JOB = "gpuattr-attribution-health"
PROG = "gpuattr attribute"
"""The Pushgateway group of the job's health series: a failed run pushes there, never to ``JOB``."""


def window_seconds(window: str) -> float:
    """Seconds in the ``--window`` (a Prometheus duration); ValueError naming the flag when it is not one."""
    seconds = parse_duration(window, "--window")
    if seconds <= 0:
        raise ValueError(f"--window: must be longer than zero, got {window!r}")
    return seconds


def plan(frame_split: pd.DataFrame, recommendations: pd.DataFrame) -> Packing | None:
    """Packing of right-sized footprints (what NVML shows minus what can be given back) onto GPUs like
    today's; a tensor-parallel server moves as a whole."""
    merged = frame_split.merge(recommendations, on=["namespace", "pod", "model", "gpu_uuid"])
    merged = merged.dropna(subset=["total_bytes", "gpu_memory_bytes"])
    if merged.empty:
        return None
    placement: dict[str, list[int]] = {}
    refused: dict[str, str] = {}
    # A MIG instance is part of a GPU whose layout the plan does not know: its server stays where it is,
    # and the plan counts and packs whole GPUs only.
    on_mig = merged["mig_share"] < 1 if "mig_share" in merged else pd.Series(False, index=merged.index)
    for namespace, pod in merged.loc[on_mig, ["namespace", "pod"]].drop_duplicates().itertuples(index=False):
        refused[f"{namespace}/{pod}"] = "on a MIG instance: the plan packs whole GPUs, so it stays where it is"
    merged = merged[~on_mig]
    # Servers move only onto GPUs of their own kind (same memory size): one plan per kind, added up.
    today = needed = 0
    for kind_bytes, kind in merged.groupby("gpu_memory_bytes"):
        items: list[Item] = []
        for (namespace, pod), group in kind.groupby(["namespace", "pod"]):
            reclaim = group["reclaimable_bytes"].fillna(0)
            per_gpu = int((group["total_bytes"] - reclaim).max())
            items.append(Item(f"{namespace}/{pod}", per_gpu, ranks=len(group)))
        part = pack(items, int(str(kind_bytes)), gpus_today=kind["gpu_uuid"].nunique())
        placement.update({name: [needed + i for i in gpus] for name, gpus in part.placement.items()})
        refused.update(part.refused)
        today, needed = today + part.gpus_today, needed + part.gpus_needed
    return Packing(today, needed, placement, refused)


def run(
    collected: Collected,
    *,
    window: str,
    headroom: float,
    price: float,
    at: float | None = None,
    point_in_time: bool = False,
    currency: str = "USD",
) -> Result:
    frame = split(collected.servers)
    recs = recommend(frame, headroom=headroom)
    money = costs(
        frame,
        recs,
        price_per_gpu_hour=price,
        window_hours=window_seconds(window) / 3600,
        teams=collected.teams,
        tokens=collected.tokens,
    )
    failed = table(collected.failed_starts, FAILED_START_COLUMNS)
    workers = table(collected.workers, WORKER_COLUMNS)
    return Result(
        frame,
        recs,
        money,
        plan(frame, recs),
        collected.problems,
        window,
        failed,
        workers,
        at=at,
        point_in_time=point_in_time,
        currency=currency,
    )


STATS: dict[str, float] = {}


def collect(args: argparse.Namespace) -> Collected:
    """Every input of a run; InputsFailedError, before logs and configs are read, when an essential one failed."""
    if args.prometheus:
        client = PrometheusClient(args.prometheus, timeout_s=args.timeout)
        collected = from_prometheus(client, args.window, args.at)
        STATS.update(prometheus_queries=client.queries, prometheus_wait_s=client.waited_s)
        log.info("Prometheus: %d queries, %.1fs waiting", client.queries, client.waited_s)
        check(collected.failed, ESSENTIAL)
    else:
        from attribution.oneshot import from_endpoints

        collected = from_endpoints(args.vllm, args.exporter_url, timeout_s=args.timeout)
    reader = None
    if args.logs_from_kubernetes:
        from attribution.collect import kubernetes_logs

        reader = kubernetes_logs(args.kube_api, timeout_s=args.timeout)
    add_logs(collected, Path(args.logs) if args.logs else None, read=reader)
    add_model_configs(collected, Path(args.model_configs) if args.model_configs else None)
    return collected


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="gpuattr attribute", description="Split each vLLM server's GPU memory and recommend what to give back."
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prometheus", help="Prometheus (or compatible) base URL; aggregation runs there")
    src.add_argument(
        "--vllm", action="append", default=[], metavar="NS/POD=URL", help="one-shot: a vLLM /metrics URL (repeatable)"
    )
    p.add_argument("--exporter-url", help="one-shot: the gpuattr exporter's /metrics on the servers' node")
    p.add_argument("--window", default="7d", help="time window (Prometheus duration)")
    p.add_argument("--at", type=float, default=None, help="evaluation time, unix seconds (default: now)")
    p.add_argument("--logs", help="directory of vLLM start-up logs named <namespace>_<pod>.log")
    p.add_argument("--logs-from-kubernetes", action="store_true", help="read start-up logs as pod logs from the API")
    p.add_argument("--kube-api", help="API server URL for --logs-from-kubernetes (default: in-cluster)")
    p.add_argument("--model-configs", help="directory of model configs: <org>/<name>/config.json (and safetensors)")
    p.add_argument("--headroom", type=float, default=0.2, help="KV kept above the observed peak (0.2 = 20%%)")
    p.add_argument("--price-per-gpu-hour", type=float, default=2.5, help="price of one GPU-hour")
    p.add_argument("--currency", default="USD", help="currency of the prices, shown with every cost (default: USD)")
    p.add_argument("--out", help="directory for the report files")
    p.add_argument("--format", default="csv,json,html", help="comma list of csv, parquet, json, html")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument(
        "--serve", metavar="HOST:PORT", help="serve the split as Prometheus series, re-running every --every"
    )
    p.add_argument("--every", type=float, default=300.0, help="seconds between runs with --serve")
    p.add_argument("--pushgateway", help="push the split to this Pushgateway (for a CronJob)")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds for each whole request: a Prometheus query, a scrape, a pod log",
    )
    p.add_argument("--stats", action="store_true", help="print timings (JSON) to standard error")
    return p


FORMATS = ("csv", "parquet", "json", "html")


def validate(args: argparse.Namespace) -> None:
    """Every flag checked before any query runs: an InputError naming the first bad one."""
    for flag in ("prometheus", "exporter_url", "kube_api"):
        url = getattr(args, flag)
        if url is not None:
            http_url(url, f"--{flag.replace('_', '-')}")
    for spec in args.vllm:
        name, sep, url = spec.partition("=")
        namespace, slash, pod = name.partition("/")
        parts = urlsplit(url)
        if not (sep and slash and namespace and pod) or parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(f"--vllm: expected NAMESPACE/POD=http://HOST:PORT/metrics, got {spec!r}")
    for flag in ("headroom", "price_per_gpu_hour"):  # a negative headroom recommends less KV than the peak used
        value = getattr(args, flag)
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"--{flag.replace('_', '-')}: must be a number of zero or more, got {value}")
    for flag in ("every", "timeout"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"--{flag}: must be a number of seconds above zero, got {value}")
    try:
        window_seconds(args.window)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    for flag in ("logs", "model_configs"):
        folder = getattr(args, flag)
        if folder is not None and not Path(folder).is_dir():
            what = "is not a folder" if Path(folder).exists() else "does not exist"
            raise InputError(f"--{flag.replace('_', '-')}: {folder!r} {what}")
    if not args.currency.strip() or len(args.currency) > 12:
        raise InputError(f"--currency: expected a short currency name such as USD or EUR, got {args.currency!r}")
    unknown = [f for f in (part.strip() for part in args.format.split(",")) if f and f not in FORMATS]
    if unknown:
        raise InputError(f"--format: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(FORMATS)}")
    if args.out is not None:
        output_folder(args.out, "--out")
    if args.serve is not None:
        address, port = host_port(args.serve, "--serve")
        try:  # a port in use is found now, not after the first run's queries
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            socket.create_server((address, port), family=family).close()
        except OSError as exc:
            raise InputError(f"--serve {args.serve}: cannot listen there: {exc.strerror or exc}") from None


def _run(args: argparse.Namespace, collected: Collected) -> Result:
    return run(
        collected,
        window=args.window,
        headroom=args.headroom,
        price=args.price_per_gpu_hour,
        at=args.at if args.at is not None else time.time(),
        point_in_time=bool(args.vllm),
        currency=args.currency,
    )


def health(args: argparse.Namespace) -> Health:
    """The job's health series, listing the inputs of its mode (none in one-shot mode)."""
    inputs = tuple(queries(args.window)) if args.prometheus else ()
    return Health("attribute", HEALTH_JOB, inputs=inputs, essential=ESSENTIAL if args.prometheus else ())


def main(argv: Sequence[str] | None = None, *, stop: threading.Event | None = None) -> int:
    """``stop``: with ``--serve``, serving ends once it is set (tests); otherwise it runs until killed."""
    args = parse_args(build_parser(), argv)
    try:
        validate(args)
    except InputError as exc:
        print(f"gpuattr attribute: {exc}", file=sys.stderr)
        return 2
    if args.vllm and not args.exporter_url:
        print("gpuattr attribute: --vllm needs --exporter-url (the node's exporter, for GPU memory)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    state = health(args)
    try:
        window_seconds(args.window)
        collected = collect(args)
        result = _run(args, collected)
    except ValueError as exc:
        print(f"gpuattr attribute: {exc}", file=sys.stderr)
        return 2
    except InputsFailedError as exc:
        # Nothing printed, written or pushed that would replace the last good figures; the failure itself is.
        state.fail(PROG, exc, exc.failed, args.pushgateway, args.timeout)
        if args.serve:
            return _serve(args, None, state, stop)
        return 1
    print(to_json(result) if args.json else terminal(result))
    if args.stats:
        STATS.update(wall_s=time.perf_counter() - started, servers=len(result.split))
        print(json.dumps({"stats": STATS}), file=sys.stderr)
    if args.out:
        try:
            paths = write_files(result, Path(args.out), [f.strip() for f in args.format.split(",") if f.strip()])
        except OutputError as exc:  # no figures pushed either: they would outlive a report nobody can read
            state.fail(PROG, exc, {}, args.pushgateway, args.timeout)
            return 1
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
    state.record(time.time(), collected.failed, ok=True)
    if args.pushgateway:
        from prometheus_client import CollectorRegistry, push_to_gateway

        registry = CollectorRegistry()
        registry.register(Families(families(result)))
        try:
            push_to_gateway(args.pushgateway, job=JOB, registry=registry, handler=push_handler(args.timeout))
        except FetchError as exc:
            print(f"gpuattr attribute: --pushgateway: {exc}", file=sys.stderr)
            return 1
        if state.push_or_say(args.pushgateway, args.timeout, PROG):
            return 1
    if args.serve:
        return _serve(args, result, state, stop)
    return 0


def _serve(args: argparse.Namespace, first: Result | None, state: Health, stop: threading.Event | None = None) -> int:
    """Serve the figures of the last good run and the job's health, re-running every ``--every`` seconds: a
    failed run leaves the figures as they were (their age is the last success's timestamp) with ``up`` 0."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    figures = Families(families(first) if first is not None else [])
    status = Families(state.families())
    registry.register(figures)
    registry.register(status)
    host, port = host_port(args.serve, "--serve")
    server, _ = start_http_server(port, host, registry=registry)
    stop = stop or threading.Event()
    try:
        while not stop.wait(args.every):
            try:
                collected = collect(args)
                result = _run(args, collected)
            except InputsFailedError as exc:
                state.record(time.time(), exc.failed, ok=False)
                log.warning("attribution run failed, serving the figures of the last good run: %s", exc)
            except Exception:
                state.record(time.time(), {}, ok=False)
                log.exception("attribution run failed; serving the figures of the last good run")
            else:
                # replaced only once the whole run has worked
                figures.replace(families(result))
                state.record(time.time(), collected.failed, ok=True)
            status.replace(state.families())
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
