"""``gpuattr review`` on the command line; every flag is also a ``GPUATTR_*`` environment variable."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from attribution.health import Health, InputsFailedError
from attribution.prometheus import PrometheusClient
from attribution.review.analysis import run
from attribution.review.data import ESSENTIAL, inputs
from attribution.review.publish import HEALTH_JOB, push
from attribution.review.render import FORMATS, headline, markdown, write
from common.checks import http_url, output_folder
from common.envflags import Parser, parse_args
from common.fetch import FetchError
from common.files import OutputError
from common.quoting import InputError
from common.units import parse_duration

PROG = "gpuattr review"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="The GPU capacity review: allocation against use, waste, SLOs, consolidation.",
    )
    p.add_argument("--prometheus", required=True, help="Prometheus (or compatible) base URL")
    p.add_argument("--window", default="7d", help="the reviewed window (Prometheus duration)")
    p.add_argument("--at", type=float, default=None, help="end of the window, unix seconds (default: now)")
    p.add_argument("--resolution", default="5m", help="step of the GPU-hour integration (subquery resolution)")
    p.add_argument("--price-per-gpu-hour", type=float, default=2.5, help="price of a GPU-hour of any other GPU model")
    p.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="GPU_MODEL=PRICE",
        help='price per GPU-hour of one GPU model, e.g. "NVIDIA H100 80GB HBM3=3.9" (repeatable)',
    )
    p.add_argument("--currency", default="USD", help="currency of the prices, shown with every cost (default: USD)")
    p.add_argument("--pushgateway", help="push the headline figures to this Pushgateway")
    p.add_argument(
        "--idle-threshold", type=float, default=0.05, help="SM activity at or below which an allocated GPU is idle"
    )
    p.add_argument("--slo-ttft", type=float, default=0.5, help="time-to-first-token target, seconds")
    p.add_argument("--slo-itl", type=float, default=0.1, help="inter-token latency target, seconds")
    p.add_argument("--headroom", type=float, default=0.2, help="kept above each pod's peaks when packing (0.2 = 20%%)")
    p.add_argument("--out", help="directory for the report files")
    p.add_argument("--format", default="html,md,csv,json", help="comma list of " + ", ".join(FORMATS))
    p.add_argument("--json", action="store_true", help="print the review as JSON instead of Markdown")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per Prometheus query or push")
    return p


def _prices(specs: Sequence[str]) -> dict[str, float]:
    prices: dict[str, float] = {}
    for spec in specs:
        model, sep, value = spec.rpartition("=")
        try:
            prices[model] = float(value)
        except ValueError:
            sep = ""
        if not sep or not model:
            raise InputError(f"--price: expected GPU_MODEL=PRICE, got {spec!r}")
    return prices


def _check(args: argparse.Namespace) -> tuple[dict[str, float], list[str]]:
    """The per-model prices and output formats; InputError naming the flag for anything that will not do."""
    for flag, text in (("--window", args.window), ("--resolution", args.resolution)):
        try:
            seconds = parse_duration(text, flag)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if seconds <= 0:
            raise InputError(f"{flag}: must be longer than zero, got {text!r}")
    prices = _prices(args.price)
    for flag, number in (
        ("--price-per-gpu-hour", args.price_per_gpu_hour),
        *((f"--price {model}", value) for model, value in prices.items()),
        ("--idle-threshold", args.idle_threshold),
        ("--slo-ttft", args.slo_ttft),
        ("--slo-itl", args.slo_itl),
        ("--headroom", args.headroom),
        ("--timeout", args.timeout),
    ):
        if not math.isfinite(number) or number < 0:
            raise InputError(f"{flag}: expected a finite number, not negative, got {number}")
    if not args.currency.strip() or len(args.currency) > 12:
        raise InputError(f"--currency: expected a short currency name such as USD or EUR, got {args.currency!r}")
    if args.timeout == 0:
        raise InputError("--timeout: must be longer than zero seconds, got 0")
    if args.idle_threshold > 1:
        raise InputError(f"--idle-threshold: a fraction of SM activity, 0 to 1, got {args.idle_threshold}")
    http_url(args.prometheus, "--prometheus")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InputError(f"--format: unknown format {unknown[0]!r} ({', '.join(FORMATS)})")
    if args.out is not None:
        output_folder(args.out, "--out")
    return prices, formats


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    try:
        prices, formats = _check(args)
    except InputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    client = PrometheusClient(args.prometheus, timeout_s=args.timeout, retries=1)
    health = Health(
        "review", HEALTH_JOB, inputs=inputs(args.window, args.resolution, args.idle_threshold), essential=ESSENTIAL
    )
    at = args.at or time.time()
    try:
        review = run(
            client,
            window=args.window,
            at=at,
            resolution=args.resolution,
            price=args.price_per_gpu_hour,
            idle=args.idle_threshold,
            slo_ttft=args.slo_ttft,
            slo_itl=args.slo_itl,
            headroom=args.headroom,
            prices=prices,
        )
    except InputsFailedError as exc:
        # Nothing printed, written or pushed that would replace the last good review; the failure itself is.
        health.fail(PROG, exc, exc.failed, args.pushgateway, args.timeout)
        return 1
    # what the reports need beside the figures: the dates covered, the currency and the headline
    review.update(start=at - parse_duration(args.window, "--window"), end=at, currency=args.currency)
    review["headline"] = headline(review)
    print(json.dumps(review, indent=1) if args.json else markdown(review))
    if args.out:
        try:
            paths = write(review, Path(args.out), formats)
        except OutputError as exc:  # the last good review stays; its figures are not replaced by a push either
            health.fail(PROG, exc, {}, args.pushgateway, args.timeout)
            return 1
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
    if args.pushgateway:
        try:
            push(review, args.pushgateway, args.timeout)
        except FetchError as exc:
            print(f"{PROG}: --pushgateway: {exc}", file=sys.stderr)
            return 1
        health.record(time.time(), dict.fromkeys(review.get("failed_inputs", []), ""), ok=True)
        return health.push_or_say(args.pushgateway, args.timeout, PROG)
    return 0
