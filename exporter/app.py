"""Wiring: settings → NVML (real or simulated) → sampler → HTTP server (+ optional OTLP push)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from exporter import __version__
from exporter.nvml.reader import NvmlReader
from exporter.sampler import Sampler, SamplerOptions
from exporter.server import MetricsServer
from exporter.settings import ExporterSettings, host_port
from exporter.snapshot import CommandNameResolver, OwnerResolver

log = logging.getLogger("gpuattr")


@dataclass
class Exporter:
    settings: ExporterSettings
    reader: NvmlReader
    sampler: Sampler
    server: MetricsServer
    simulation: Any = None  # exporter.sim.node.SimulatedNode when --simulate
    closers: list[Any] = field(default_factory=list)

    def start(self) -> None:
        self.sampler.sample_once()  # serve real data from the first scrape on
        self.sampler.start()
        self.server.start()
        log.info("serving %s every %.1fs", self.server.url, self.settings.interval)

    def stop(self) -> None:
        self.server.stop()
        self.sampler.stop()
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # pragma: no cover - best effort on shutdown
                log.exception("error while shutting down")
        self.reader.shutdown()
        if self.simulation is not None:
            self.simulation.close()


def build(settings: ExporterSettings) -> Exporter:
    settings.validate()
    simulation = None
    mode = "nvml"
    if settings.simulate:
        from exporter.sim.node import SimulatedNode

        simulation = SimulatedNode.from_file(settings.simulate, speed=settings.sim_speed, start=settings.sim_start)
        mode = "simulated"
    reader = NvmlReader(
        wall_clock=simulation.clock.wall if simulation is not None else __import__("time").time,
        use_gpm=settings.gpm,
        interval_s=settings.interval,
    )
    resolver: OwnerResolver
    if simulation is not None:
        resolver = simulation.owner_resolver(reader)
    else:
        resolver = CommandNameResolver(settings.proc_root, reader.process_name)
    options = SamplerOptions(
        interval_s=settings.interval,
        hostname=settings.hostname,
        dcgm_compat=settings.dcgm_compat,
        version=__version__,
        mode=mode,
    )
    sampler = Sampler(reader, resolver, options)
    host, port = host_port(settings.listen)
    server = MetricsServer(
        host,
        port,
        lambda: sampler.exposition,
        alive=sampler.alive,
        max_age_s=max(60.0, 3 * settings.interval),
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        tls_client_ca=settings.tls_client_ca,
    )
    exporter = Exporter(settings, reader, sampler, server, simulation)
    if settings.otlp_endpoint:
        from exporter.otlp import OtlpPusher

        # A push runs on the sampler thread: bound it well inside one interval.
        pusher = OtlpPusher(
            settings.otlp_endpoint,
            insecure=settings.otlp_insecure,
            hostname=settings.hostname,
            timeout_s=min(5.0, settings.interval / 2),
        )
        sampler.listeners.append(pusher.push)
        options.extra_families.append(pusher.families)
        exporter.closers.append(pusher.close)
    return exporter
