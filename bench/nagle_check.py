"""Why a keep-alive scrape of a small response takes ~40 ms: Nagle's algorithm against delayed ACKs.

The exporter's handler writes the headers and the body in two ``send`` calls. When the body fits in one
TCP segment, Nagle holds it until the client ACKs the headers, and the client delays that ACK (~40 ms on
Linux) waiting for more data. This script serves one sample of a scenario in-process (sampler thread not
started, so nothing else competes) and times keep-alive GETs with the handler as it is and with
``disable_nagle_algorithm = True`` (TCP_NODELAY on accepted sockets), set here from outside.

    .venv/bin/python bench/nagle_check.py [--scenario scenarios/h100-inference-node.yaml] [--requests 200]
"""

from __future__ import annotations

import argparse
import http.client
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def latencies_ms(port: int, path: str, headers: dict[str, str], requests: int) -> tuple[list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out: list[float] = []
    size = 0
    try:
        for _ in range(requests):
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            size = len(resp.read())
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    out.sort()
    return out, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "h100-inference-node.yaml")
    parser.add_argument("--requests", type=int, default=200, help="keep-alive GETs per case")
    args = parser.parse_args(argv)

    from exporter.app import build
    from exporter.settings import ExporterSettings

    settings = ExporterSettings(
        listen="127.0.0.1:0", simulate=str(args.scenario), interval=5.0, sim_start=60.0, log_level="warning"
    )
    exporter = build(settings)
    handler: Any = exporter.server.httpd.RequestHandlerClass  # the class the server instantiates per connection
    exporter.sampler.sample_once()
    exporter.server.start()
    print(f"scenario {args.scenario}; {args.requests} keep-alive GETs per case; p50 / p99 / max in ms")
    print("| TCP_NODELAY | request | body bytes | p50 | p99 | max |\n|---|---|---:|---:|---:|---:|")
    try:
        for nodelay in (False, True):
            handler.disable_nagle_algorithm = nodelay  # read by StreamRequestHandler.setup() per connection
            for path, headers in (
                ("/metrics", {"Accept-Encoding": "gzip"}),
                ("/metrics", {}),
                ("/readyz", {}),
            ):
                lat, size = latencies_ms(exporter.server.port, path, headers, args.requests)
                what = path + (" (gzip)" if headers else "")
                p99 = lat[max(0, round(0.99 * len(lat)) - 1)]
                print(
                    f"| {'on (as shipped)' if nodelay else 'off (before the fix)'} | {what} | {size} | "
                    f"{lat[len(lat) // 2]:.2f} | {p99:.2f} | {lat[-1]:.2f} |"
                )
    finally:
        exporter.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
