"""dcgm-exporter as a source: its profiling fields, read on the sampler's interval, matched to our GPUs.

dcgm-exporter measures each GPU (or MIG instance) with DCGM's profiling fields, the best device-level
activity measures on GPUs without NVML GPM. It cannot say which pod on a shared GPU caused them; the
sampler splits them across processes by their NVML activity (see ``exporter.snapshot``).

A failed, slow or malformed scrape gives no values for that sample: nothing stale is reported as
current, the source is marked down, and NVML-derived values keep being served.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric as Family
from prometheus_client.parser import text_string_to_metric_families

from common.families import family
from common.fetch import FetchError, fetch
from exporter.readings import DcgmKey

log = logging.getLogger("gpuattr.dcgm")

# Our name for a field -> the dcgm-exporter metric names that carry it (first found wins).
FIELDS: dict[str, tuple[str, ...]] = {
    "sm_active": ("DCGM_FI_PROF_SM_ACTIVE",),
    "sm_occupancy": ("DCGM_FI_PROF_SM_OCCUPANCY",),
    "dram_active": ("DCGM_FI_PROF_DRAM_ACTIVE",),
    "tensor_active": ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",),
    "engine_active": ("DCGM_FI_PROF_GR_ENGINE_ACTIVE",),
}
UUID_LABELS = ("UUID", "uuid")
INSTANCE_LABELS = ("GPU_I_ID", "gpu_i_id")
MAX_BODY_BYTES = 32 * 2**20  # a node's dcgm-exporter page is tens of KiB; refuse anything absurd
# FetchError's reason -> the error counter's (a URL that cannot be fetched counts as unreachable).
_ACCEPT = {"Accept": "text/plain"}
_REASONS = {"timeout": "timeout", "http": "http", "too_large": "too_large", "unreachable": "unreachable"}


class DcgmError(Exception):
    """A scrape that gave nothing usable; ``reason`` is the error counter's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class DcgmReading:
    values: dict[DcgmKey, dict[str, float]]  # field -> ratio 0..1
    taken_at: float  # unix seconds


def parse_aliases(text: str) -> dict[str, str]:
    """``NEW_NAME=OLD_NAME,…`` → {new: old}: lets a renamed field stand for one we know."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        new, sep, old = part.partition("=")
        if not sep or not new.strip() or not old.strip():
            raise ValueError(f"--dcgm-field-aliases: expected NEW=OLD, got {part!r}")
        out[new.strip()] = old.strip()
    return out


def _scale(values: list[float]) -> float:
    """Profiling fields are 0..1 ratios. Releases before mid-2024 said "(in %)" in their HELP while still
    serving ratios (NVIDIA/dcgm-exporter#346), so the HELP text is not trusted: a family is read as percent
    only when a value of it is above 1."""
    return 0.01 if any(v > 1.0 for v in values) else 1.0


def parse_page(text: str, aliases: Mapping[str, str] | None = None) -> dict[DcgmKey, dict[str, float]]:
    """The profiling fields of one dcgm-exporter page, by GPU UUID and MIG instance, as 0..1 ratios.

    Raises DcgmError("parse") on a page prometheus-client's parser rejects.
    """
    wanted = {name: key for key, names in FIELDS.items() for name in names}
    for new, old in (aliases or {}).items():
        if old in wanted:
            wanted[new] = wanted[old]
    out: dict[DcgmKey, dict[str, float]] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise DcgmError("parse", str(exc)[:200]) from exc
    for fam in families:
        key_name = wanted.get(fam.name)
        if key_name is None:
            continue
        scale = _scale([float(x.value) for x in fam.samples if not math.isnan(float(x.value))])
        for sample in fam.samples:
            labels = sample.labels
            uuid = next((labels[k] for k in UUID_LABELS if labels.get(k)), "")
            if not uuid:
                continue
            instance = next((labels[k] for k in INSTANCE_LABELS if labels.get(k)), "")
            value = float(sample.value) * scale
            if math.isnan(value):  # DCGM had no value (a blank field)
                continue
            out.setdefault(DcgmKey(uuid, instance), {})[key_name] = min(1.0, max(0.0, value))
    return out


@dataclass
class DcgmSource:
    """Scrapes a dcgm-exporter ``/metrics`` page once per sample."""

    url: str
    timeout_s: float = 2.0
    aliases: dict[str, str] = field(default_factory=dict)
    wall_clock: Callable[[], float] = time.time
    up: bool = False
    errors_total: dict[str, int] = field(default_factory=dict)
    last_duration_s: float = 0.0
    _logged: str | None = None

    def families(self) -> list[Family]:
        """The source's own health: up, errors by reason, scrape time."""
        from common import catalog as c

        up, errors, duration = (
            family(c.EXPORTER_DCGM_UP),
            family(c.EXPORTER_DCGM_ERRORS),
            family(c.EXPORTER_DCGM_DURATION),
        )
        up.add_metric([], 1 if self.up else 0)
        for reason, n in sorted(self.errors_total.items()):
            errors.add_metric([reason], n)
        duration.add_metric([], self.last_duration_s)
        return [up, errors, duration]

    def read(self) -> DcgmReading | None:
        """This sample's values, or None (and the source marked down) when the scrape failed."""
        started = time.perf_counter()
        try:
            values = parse_page(self._fetch(), self.aliases)
            if not values:
                raise DcgmError("no_fields", "no profiling field with a UUID label on the page")
        except DcgmError as exc:
            self.last_duration_s = time.perf_counter() - started
            self.up = False
            self.errors_total[exc.reason] = self.errors_total.get(exc.reason, 0) + 1
            if self._logged != exc.reason:
                log.warning("dcgm-exporter at %s gives no usable data (%s); serving NVML-derived values", self.url, exc)
                self._logged = exc.reason
            return None
        self.last_duration_s = time.perf_counter() - started
        if self._logged is not None:
            log.info("dcgm-exporter at %s answers again", self.url)
            self._logged = None
        self.up = True
        return DcgmReading(values, self.wall_clock())

    def _fetch(self) -> str:
        """The page, read within ``timeout_s`` in all (a trickling peer is cut off) and ``MAX_BODY_BYTES``."""
        try:
            answer = fetch(
                self.url, timeout_s=self.timeout_s, max_bytes=MAX_BODY_BYTES, headers={"Accept": "text/plain"}
            )
        except FetchError as exc:
            raise DcgmError(_REASONS.get(exc.reason, "unreachable"), exc.detail) from exc
        try:
            return answer.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DcgmError("parse", "page is not UTF-8") from exc
