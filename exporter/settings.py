"""Exporter settings: one dataclass, every field a CLI flag and an environment variable.

``--interval 10`` and ``GPUATTR_INTERVAL=10`` mean the same; a flag wins over the variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import catalog, net
from common.envflags import default_text, env_name, parse_bool, with_default
from common.quoting import InputError, short_repr


class SettingsError(InputError):
    """A setting that cannot be used; names the flag and its environment variable."""


def _opt(help: str, **extra: Any) -> Any:
    return {"help": help, **extra}


@dataclass
class ExporterSettings:
    listen: str = field(
        default="0.0.0.0:9835", metadata=_opt("address:port to serve /metrics, /healthz and /readyz on")
    )
    interval: float = field(default=5.0, metadata=_opt("seconds between samples; a scrape serves the latest one"))
    nvml_timeout: float = field(
        default=2.0,
        metadata=_opt(
            "seconds a sample waits for NVML; a GPU whose call has not returned by then is reported down "
            "and skipped until the call returns, while the other GPUs are read"
        ),
    )
    simulate: str | None = field(
        default=None,
        metadata=_opt("scenario YAML: run a simulated GPU node instead of reading the real driver"),
    )
    sim_speed: float = field(default=1.0, metadata=_opt("simulated seconds per real second (with --simulate)"))
    sim_start: float = field(default=0.0, metadata=_opt("scenario second the simulation starts at (with --simulate)"))
    proc_root: str = field(default="/proc", metadata=_opt("the host's /proc as mounted in the container"))
    hostname: str = field(
        default_factory=lambda: os.environ.get("NODE_NAME") or socket.gethostname(),
        metadata=_opt(
            "node name for the Hostname (or hostname) label of --dcgm-compat series "
            "(default: $NODE_NAME, else the host name)"
        ),
    )
    gpm: bool = field(default=True, metadata=_opt("read GPM activity metrics on Hopper and newer"))
    dcgm_compat: bool | str = field(
        default=False,
        metadata=_opt(
            "also serve device series under dcgm-exporter's names and labels, as the given generation of its "
            f"pages has them ({', '.join(g.name for g in catalog.DCGM_GENERATIONS)}; bare or 'true': "
            f"{catalog.DCGM_DEFAULT_GENERATION})",
            optional_value=True,
        ),
    )
    dcgm_exporter_url: str | None = field(
        default=None,
        metadata=_opt(
            "dcgm-exporter /metrics to read profiling fields from (e.g. http://localhost:9400/metrics); "
            "'simulated' with --simulate; off when unset"
        ),
    )
    dcgm_timeout: float = field(default=2.0, metadata=_opt("seconds to wait for dcgm-exporter each sample"))
    dcgm_field_aliases: str = field(
        default="",
        metadata=_opt("NEW=OLD,…: read a renamed dcgm-exporter field as the one it replaced"),
    )
    max_usages: int = field(
        default=4096,
        metadata=_opt(
            "most (GPU or MIG instance, owner) usage rows per sample; "
            "the smallest holders beyond it are dropped and counted"
        ),
    )
    max_connections: int = field(
        default=8,
        metadata=_opt(
            "most scrape responses written at once (a quarter of them to one client address); "
            "more get 503 with Retry-After and are counted"
        ),
    )
    max_request_rate: float = field(
        default=100.0,
        metadata=_opt("scrapes served per second, in bursts of as many; more wait, then get 503 (counted)"),
    )
    max_open_connections: int = field(
        default=64,
        metadata=_opt(
            "most HTTP connections open at once, idle or reading their request included; more get 503 (counted)"
        ),
    )
    max_client_connections: int = field(
        default=16,
        metadata=_opt("most HTTP connections open at once from one client address; more get 503 (counted)"),
    )
    max_client_request_rate: float = field(
        default=10.0,
        metadata=_opt(
            "scrapes served per second to one client address, in bursts of as many (health probes have their "
            "own budget of as many); more wait, then get 503 (counted)"
        ),
    )
    request_timeout: float = field(
        default=5.0,
        metadata=_opt(
            "seconds, in all, for a request's headers to arrive after its first byte and for its response to be "
            "taken; a slower client is disconnected (counted)"
        ),
    )
    tls_cert: str | None = field(default=None, metadata=_opt("PEM certificate: serve /metrics over HTTPS"))
    tls_key: str | None = field(default=None, metadata=_opt("PEM private key for --tls-cert"))
    tls_client_ca: str | None = field(
        default=None, metadata=_opt("PEM CA bundle: require client certificates signed by it (mutual TLS)")
    )
    otlp_endpoint: str | None = field(
        default=None, metadata=_opt("OTLP/gRPC endpoint (host:port) to push each snapshot to; off when unset")
    )
    otlp_insecure: bool = field(default=False, metadata=_opt("push OTLP without TLS (plaintext gRPC)"))
    kubernetes: bool = field(
        default=False, metadata=_opt("resolve pods, workloads and models through the Kubernetes API (watch)")
    )
    node_name: str = field(
        default_factory=lambda: os.environ.get("NODE_NAME", ""),
        metadata=_opt("this node's name, to watch only its pods (default: $NODE_NAME from the downward API)"),
    )
    kube_api: str | None = field(
        default=None, metadata=_opt("API server URL (default: in-cluster service account configuration)")
    )
    pod_resources_socket: str | None = field(
        default=None,
        metadata=_opt("kubelet pod-resources socket, e.g. /var/lib/kubelet/pod-resources/kubelet.sock; off when unset"),
    )
    gpu_resources: str = field(
        default="nvidia.com/gpu,nvidia.com/mig-,nvidia.com/gpu.shared",
        metadata=_opt("comma-separated resource-name prefixes that count as GPU allocations"),
    )
    model_label: str = field(
        default="gpuattr.io/model", metadata=_opt("pod label or annotation that names the model a pod serves")
    )
    class_label: str = field(
        default="gpuattr.io/workload-class",
        metadata=_opt("pod label: inference, training, batch or experimentation (else inferred)"),
    )
    team_label: str = field(default="team", metadata=_opt("pod label or namespace label naming the owning team"))
    log_level: str = field(default="info", metadata=_opt("debug, info, warning or error"))

    def validate(self) -> ExporterSettings:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"{flag_name(f.name)} / {env_name(f.name)}: must be a finite number, got {value}")
        if self.interval <= 0:
            raise SettingsError(f"--interval / {env_name('interval')}: must be positive, got {self.interval}")
        if not self.nvml_timeout > 0:
            raise SettingsError(
                f"--nvml-timeout / {env_name('nvml_timeout')}: must be positive, got {self.nvml_timeout}"
            )
        if self.sim_speed <= 0:
            raise SettingsError(f"--sim-speed / {env_name('sim_speed')}: must be positive, got {self.sim_speed}")
        host_port(self.listen)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("--tls-cert and --tls-key go together (GPUATTR_TLS_CERT, GPUATTR_TLS_KEY)")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("--tls-client-ca needs --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                what = "is not a file" if os.path.exists(path) else "does not exist"
                raise SettingsError(f"{flag_name(name)} / {env_name(name)}: {path!r} {what}")
        if not self.max_request_rate >= 1:
            raise SettingsError(f"--max-request-rate / {env_name('max_request_rate')}: must be at least 1")
        if self.max_connections < 1:
            raise SettingsError(f"--max-connections / {env_name('max_connections')}: must be at least 1")
        if self.max_open_connections < 1:
            raise SettingsError(f"--max-open-connections / {env_name('max_open_connections')}: must be at least 1")
        if self.max_client_connections < 1:
            raise SettingsError(f"--max-client-connections / {env_name('max_client_connections')}: must be at least 1")
        if not self.max_client_request_rate >= 1:
            raise SettingsError(
                f"--max-client-request-rate / {env_name('max_client_request_rate')}: must be at least 1"
            )
        if not self.request_timeout > 0:
            raise SettingsError(
                f"--request-timeout / {env_name('request_timeout')}: must be positive, got {self.request_timeout}"
            )
        if self.max_usages < 1:
            raise SettingsError(f"--max-usages / {env_name('max_usages')}: must be at least 1")
        if self.dcgm_timeout <= 0:
            raise SettingsError(f"--dcgm-timeout / {env_name('dcgm_timeout')}: must be positive")
        if self.dcgm_exporter_url == "simulated" and not self.simulate:
            raise SettingsError("--dcgm-exporter-url simulated needs --simulate")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"--log-level / {env_name('log_level')}: unknown level {self.log_level!r}")
        return self


def host_port(listen: str) -> tuple[str, int]:
    """``--listen``'s host and port (``common.net.host_port``), refused as a setting naming the flag."""
    try:
        return net.host_port(listen, f"--listen / {env_name('listen')}")
    except InputError as exc:
        raise SettingsError(str(exc)) from None


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _parse_bool(text: str, where: str) -> bool:
    try:
        return parse_bool(text, where)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _bool_or_generation(text: str, where: str) -> bool | str:
    """True or false as for a switch, else a dcgm-exporter generation's name; anything else is refused."""
    names = [g.name for g in catalog.DCGM_GENERATIONS]
    if text.strip() in names:
        return text.strip()
    try:
        return parse_bool(text, where)
    except ValueError:
        raise SettingsError(
            f"{where}: expected true or false, or a dcgm-exporter generation ({', '.join(names)}), "
            f"got {short_repr(text)}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any], defaults: Mapping[str, Any] | None = None) -> None:
    """One flag per dataclass field; help shows the default (``defaults`` overrides the field's, as a
    command that starts from other values does) and the environment variable. A computed default is
    described in the field's own help."""
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        declared = defaults.get(f.name, f.default)
        shown = None if declared is dataclasses.MISSING else default_text(declared)
        help_text = with_default(f.metadata.get("help", ""), shown, env_name(f.name))
        if f.metadata.get("optional_value") is not None:  # --flag, --flag VALUE and --no-flag
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                nargs="?",
                const=f.metadata["optional_value"],
                default=None,
                help=help_text,
                metavar=f.name.upper(),
            )
            parser.add_argument(
                "--no-" + flag_name(f.name)[2:],
                dest=f.name,
                action="store_const",
                const=False,
                default=None,
                help=f"turn {flag_name(f.name)} off (its default)",
            )
        elif f.type in ("bool", bool):
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, help=help_text, metavar=f.name.upper())


def from_sources(cls: type[Any], args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Any:
    """Build settings: flag, else environment variable, else the field's default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name, None)
        where = flag_name(f.name)
        if raw is None and env_name(f.name) in environ:
            raw, where = environ[env_name(f.name)], env_name(f.name)
        if raw is None:
            continue
        values[f.name] = _convert(f.type, raw, where)
    return cls(**values)


def _convert(kind: Any, raw: Any, where: str) -> Any:
    kind = str(kind)
    if isinstance(raw, bool):
        return raw
    if kind == "bool":
        return _parse_bool(str(raw), where)
    if kind == "bool | str":  # a switch that may name what to switch on: --dcgm-compat [GENERATION]
        return _bool_or_generation(str(raw), where)
    if kind in ("float", "int"):
        try:
            return float(raw) if kind == "float" else int(raw)
        except ValueError:
            raise SettingsError(f"{where}: expected a number, got {raw!r}") from None
    if kind.startswith("list"):
        return [part.strip() for part in str(raw).split(",") if part.strip()]
    return str(raw) if raw != "" or "None" not in kind else None


def parse(cls: type[Any], argv: Sequence[str], environ: Mapping[str, str] | None = None, prog: str = "gpuattr") -> Any:
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser, cls)
    return from_sources(cls, parser.parse_args(list(argv)), environ)
