"""Wiring: settings → NVML (real or simulated) → sampler → HTTP server (+ optional OTLP push)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric as Family

from common import catalog as c
from common.families import family
from exporter import __version__
from exporter.nvml.reader import NvmlReader
from exporter.sampler import Sampler, SamplerOptions
from exporter.server import MetricsServer
from exporter.settings import ExporterSettings, SettingsError, host_port
from exporter.snapshot import OwnerResolver

log = logging.getLogger("gpuattr")


@dataclass
class Exporter:
    settings: ExporterSettings
    reader: NvmlReader
    sampler: Sampler
    server: MetricsServer
    simulation: Any = None  # simulator.node.SimulatedNode when --simulate
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


def _simulated_node(settings: ExporterSettings) -> Any:
    """The simulator, loaded only for ``--simulate``; the agent's image does not contain it."""
    try:
        from simulator.node import SimulatedNode
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in {"simulator", "pydantic"}:
            raise
        raise SettingsError(
            "--simulate: the simulator is not installed here (the agent image leaves it out); "
            "run it from a source checkout or install gpu-attribution[simulator]"
        ) from None
    return SimulatedNode.from_file(settings.simulate or "", speed=settings.sim_speed, start=settings.sim_start)


def build(settings: ExporterSettings, simulation: Any = None) -> Exporter:
    """``simulation``: a :class:`simulator.node.SimulatedNode` to run on (a soak drives its clock by
    hand); else one is made from ``--simulate`` when set."""
    settings.validate()
    mode = "nvml"
    closers: list[Any] = []
    if simulation is None and settings.simulate:
        simulation = _simulated_node(settings)
    if simulation is not None:
        mode = "simulated"
        settings.proc_root = str(simulation.proc.root)
        if settings.kubernetes:
            settings.kube_api, settings.pod_resources_socket = simulation.start_kubernetes()
            settings.node_name = simulation.scenario.node.name
    reader = NvmlReader(
        wall_clock=simulation.clock.wall if simulation is not None else time.time,
        monotonic=simulation.clock.now if simulation is not None else time.monotonic,  # GPM spacing: sim time
        use_gpm=settings.gpm,
        pcie_throughput=bool(settings.dcgm_compat),  # only dcgm-exporter's PCIe fields use it
        interval_s=settings.interval,
        call_timeout_s=settings.nvml_timeout,
    )
    options = SamplerOptions(
        interval_s=settings.interval,
        hostname=settings.hostname,
        dcgm_compat=settings.dcgm_compat,
        version=__version__,
        mode=mode,
        max_usages=settings.max_usages,
    )
    if simulation is not None:
        options.before_sample.append(simulation.sync)
        if settings.dcgm_exporter_url == "simulated":
            settings.dcgm_exporter_url = simulation.start_dcgm_exporter()
        simulation.start_vllm_servers()  # the scenario's vLLM servers serve their /metrics and logs
    if settings.dcgm_exporter_url:
        from exporter.dcgm import DcgmSource, parse_aliases

        try:
            aliases = parse_aliases(settings.dcgm_field_aliases)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        options.dcgm = DcgmSource(
            settings.dcgm_exporter_url, settings.dcgm_timeout, aliases, wall_clock=reader.wall_clock
        )
        options.extra_families.append(options.dcgm.families)
    try:
        resolver = _kubernetes(settings, reader, options, closers)
    except BaseException:
        for close in reversed(closers):
            close()
        if simulation is not None:
            simulation.close()
        raise
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
        max_connections=settings.max_connections,
        max_rate=settings.max_request_rate,
        max_open=settings.max_open_connections,
        max_open_per_client=settings.max_client_connections,
        client_rate=settings.max_client_request_rate,
        request_timeout_s=settings.request_timeout,
    )
    options.extra_families.append(lambda: [_rejected(server)])
    exporter = Exporter(settings, reader, sampler, server, simulation, closers)
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
        closers.append(pusher.close)
    return exporter


def _rejected(server: MetricsServer) -> Family:
    fam = family(c.EXPORTER_HTTP_REJECTED)
    for reason, n in server.rejected.items():
        fam.add_metric([reason], n)
    return fam


def _kubernetes(
    settings: ExporterSettings, reader: NvmlReader, options: SamplerOptions, closers: list[Any]
) -> OwnerResolver:
    """Process → container through /proc; pods through the API watch; allocations through the kubelet."""
    from exporter.pods import Allocations, KubeOwnerResolver, LabelKeys, PodMetadata
    from exporter.resolve.procfs import ProcReader

    cache = None
    if settings.kubernetes:
        from common.kube import make_api_client
        from exporter.resolve.kube import KubeSettings, PodCache

        if not settings.node_name:
            raise SettingsError(
                "--kubernetes needs --node-name / GPUATTR_NODE_NAME (or NODE_NAME from the downward API)"
            )
        cache = PodCache(make_api_client(settings.kube_api), KubeSettings(node_name=settings.node_name))
        cache.start()
        closers.append(cache.stop)
    allocations = None
    if settings.pod_resources_socket:
        from exporter.resolve.podresources import PodResourcesClient

        prefixes = [p.strip() for p in settings.gpu_resources.split(",") if p.strip()]
        client = PodResourcesClient(settings.pod_resources_socket, resource_prefixes=prefixes, timeout_s=2.0)
        allocations = Allocations(client)
        closers.append(client.close)
        options.dcgm_pods = allocations.placed  # refreshed by metadata.before_families, before rendering
    resolver = KubeOwnerResolver(ProcReader(settings.proc_root), cache, nvml_name=reader.process_name)
    metadata = PodMetadata(
        resolver,
        cache,
        allocations,
        LabelKeys(model=settings.model_label, workload_class=settings.class_label, team=settings.team_label),
    )
    options.before_families.append(metadata.before_families)
    options.extra_families.append(metadata.families)
    if cache is not None:
        cache.wait_synced(5.0)  # best effort: the first sample should carry pod names when the API answers
    return resolver
