"""Whether the attribution job's and the capacity review's runs worked, as series to alert on.

A run whose essential inputs failed raises :class:`InputsFailedError` before anything is written or published:
its figures would replace good ones with zeros. What it does publish is its failure: :class:`Health` holds
``gpuattr_job_up``, the last run's and the last success's time and which inputs failed, served beside the
figures (``--serve``) or pushed to a Pushgateway group of its own (``--pushgateway``), never the figures'.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, push_to_gateway, pushadd_to_gateway
from prometheus_client.metrics_core import Metric as Family

from common import catalog as c
from common.families import Families, family, one
from common.fetch import FetchError, push_handler

REASON_CHARS = 300
"""How much of the first failure's reason the one-line summary quotes."""


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """``text`` on one line (runs of white space made one space), cut to ``limit`` characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class InputsFailedError(Exception):
    """Essential inputs of a run failed; ``failed`` maps every input that failed (essential or not) to why."""

    def __init__(self, failed: Mapping[str, str], essential: Sequence[str]) -> None:
        self.failed = dict(failed)
        self.missing = [name for name in essential if name in self.failed]
        first = self.failed[self.missing[0]] if self.missing else "unknown"
        super().__init__(
            f"essential inputs failed ({', '.join(self.missing)}), nothing written or published: {one_line(first)}"
        )


def check(failed: Mapping[str, str], essential: Sequence[str]) -> None:
    """InputsFailedError when any of ``essential`` is among the ``failed`` inputs."""
    if any(name in failed for name in essential):
        raise InputsFailedError(failed, essential)


@dataclass
class Health:
    """The health series of one command (``attribute`` or ``review``) across its runs."""

    command: str
    push_job: str
    """The Pushgateway group (its ``job``) of the health series: never the figures' group."""
    inputs: Sequence[str] = ()
    essential: Sequence[str] = ()
    up: bool | None = None
    last_run: float | None = None
    last_success: float | None = None
    failed: dict[str, str] = field(default_factory=dict)

    def record(self, at: float, failed: Mapping[str, str], *, ok: bool) -> None:
        self.up, self.last_run, self.failed = ok, at, dict(failed)
        if ok:
            self.last_success = at

    def families(self) -> list[Family]:
        if self.up is None:
            return []
        out: list[Family] = [one(c.JOB_UP, 1.0 if self.up else 0.0, [self.command])]
        if self.last_run is not None:
            out.append(one(c.JOB_LAST_RUN, self.last_run, [self.command]))
        if self.last_success is not None:
            out.append(one(c.JOB_LAST_SUCCESS, self.last_success, [self.command]))
        inputs = family(c.JOB_INPUT_FAILED)
        for name in dict.fromkeys([*self.inputs, *self.failed]):
            essential = "true" if name in self.essential else "false"
            inputs.add_metric([self.command, name, essential], 1.0 if name in self.failed else 0.0)
        out.append(inputs)
        return out

    def push(self, gateway: str, timeout_s: float) -> None:
        """The health series to their own group: a success replaces the group (PUT); a failure replaces only
        the series it carries (POST), so the last success's timestamp pushed before stays in place."""
        registry = CollectorRegistry()
        registry.register(Families(self.families()))
        send = push_to_gateway if self.up else pushadd_to_gateway
        send(gateway, job=self.push_job, registry=registry, handler=push_handler(timeout_s))

    def fail(
        self, prog: str, message: object, failed: Mapping[str, str], gateway: str | None, timeout_s: float
    ) -> None:
        """A run that failed: one line on stderr, the health down (pushed where there is a Pushgateway), and
        nothing else, so the last good figures and reports stay where they are."""
        print(f"{prog}: {message}", file=sys.stderr)
        self.record(time.time(), failed, ok=False)
        if gateway:
            self.push_or_say(gateway, timeout_s, prog)

    def push_or_say(self, gateway: str, timeout_s: float, prog: str) -> int:
        """``push``, for a command's exit code: 0, or 1 with one line on stderr naming the Pushgateway."""
        try:
            self.push(gateway, timeout_s)
        except FetchError as exc:
            print(f"{prog}: --pushgateway: {exc}", file=sys.stderr)
            return 1
        return 0
