"""The Prometheus HTTP API, as the attribution job uses it: instant queries that aggregate in PromQL, and
range queries for the few figures shown over time.

Works against Prometheus and anything that speaks its query API (Thanos, Mimir, VictoriaMetrics). The job
asks for ``max_over_time``/``quantile_over_time`` over its window, so its cost grows with the number of
servers, not with the number of samples.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from common.fetch import HTML_ANSWER, FetchError, fetch, looks_like_html, redact

MAX_RESPONSE_BYTES = 256 * 2**20


class PrometheusError(RuntimeError):
    """A query that gave no answer; names the server, the query and why."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (unix seconds, value), in time order; steps without a value are absent


@dataclass
class PrometheusClient:
    url: str
    timeout_s: float = 60.0
    retries: int = 2
    waited_s: float = 0.0  # time spent waiting on the server, for the job's own accounting
    queries: int = 0
    warnings: list[str] = field(default_factory=list)
    unreachable: str | None = None
    """Why the server is down: a query got no connection after every try, or timed out and the server did not
    answer a readiness check either. Later queries of the run are refused at once instead of waiting on it
    again, so a dead Prometheus costs one query's tries, not all of them. A 5xx or a slow query is that
    query's failure only."""

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant vector query; a scalar answer comes back as one sample without labels."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._get("/api/v1/query", params, expr)
        server = redact(self.url)  # in messages: never a password
        try:
            data: dict[str, Any] = body.get("data") or {}
            kind, result = data.get("resultType"), data.get("result", [])
            if kind == "scalar":
                return [Sample({}, float(result[1]))]
            if kind != "vector":
                raise PrometheusError(f"{server}: query {expr!r} gave a {kind}, expected an instant vector")
            return [
                Sample({str(k): str(v) for k, v in item.get("metric", {}).items()}, float(item["value"][1]))
                for item in result
            ]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise PrometheusError(f"{server}: answer to {expr!r} is not a Prometheus result: {exc!r}") from exc

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Series]:
        """A range query evaluated at ``start``, ``start + step_s``, ... up to ``end``; the same errors,
        tries, deadline and refusal after a dead server as :meth:`query`.

        ``nocache=1`` asks VictoriaMetrics to evaluate at exactly these times (with caching on, it moves the
        steps of a long range onto multiples of the step); Prometheus and others ignore it."""
        step = f"{step_s:.0f}" if step_s == int(step_s) else f"{step_s:.3f}"
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step, "nocache": "1"}
        body = self._get("/api/v1/query_range", params, expr)
        server = redact(self.url)
        try:
            data: dict[str, Any] = body.get("data") or {}
            kind, result = data.get("resultType"), data.get("result", [])
            if kind != "matrix":
                raise PrometheusError(f"{server}: query {expr!r} gave a {kind}, expected a range vector")
            return [
                Series(
                    {str(k): str(v) for k, v in item.get("metric", {}).items()},
                    [(float(t), float(v)) for t, v in item["values"]],
                )
                for item in result
            ]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise PrometheusError(f"{server}: answer to {expr!r} is not a Prometheus result: {exc!r}") from exc

    def _get(self, path: str, params: dict[str, str], expr: str) -> dict[str, Any]:
        """The JSON answer to one request; 5xx, time-outs and unreachable servers are retried, 4xx are not.

        ``timeout_s`` bounds each try as a whole (however slowly the server sends), not each socket read.
        """
        url = self.url.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
        server = redact(self.url)
        if self.unreachable is not None:
            raise PrometheusError(
                f"{server}: no answer to {expr!r}: not asked, after {self.unreachable} earlier in this run"
            )
        last: FetchError | None = None
        for attempt in range(self.retries + 1):
            started = time.perf_counter()
            try:
                raw = fetch(url, timeout_s=self.timeout_s, max_bytes=MAX_RESPONSE_BYTES).body
            except FetchError as exc:
                if exc.reason == "too_large":
                    raise PrometheusError(
                        f"{server}: answer to {expr!r} larger than {MAX_RESPONSE_BYTES} bytes"
                    ) from exc
                if exc.reason == "bad_url":
                    raise PrometheusError(f"{server}: {exc.detail}") from exc
                if exc.status is not None and 400 <= exc.status < 500:  # a bad query does not improve by asking again
                    detail = exc.detail if looks_like_html(exc.body) else exc.body[:2000].decode(errors="replace")
                    raise PrometheusError(f"{server}: query {expr!r} refused (HTTP {exc.status}): {detail}") from exc
                last = exc
            else:
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError as exc:
                    if looks_like_html(raw):
                        what = "the Prometheus HTTP API"
                        raise PrometheusError(
                            f"{server}: answer to {expr!r} is {HTML_ANSWER.format(what=what)}"
                        ) from exc
                    raise PrometheusError(f"{server}: answer to {expr!r} is not JSON") from exc
                if not isinstance(body, dict) or body.get("status") != "success":
                    error = body.get("error", body) if isinstance(body, dict) else body
                    raise PrometheusError(f"{server}: query {expr!r} failed: {error}")
                self.warnings += [str(w) for w in body.get("warnings", [])]
                return dict(body)
            finally:
                self.waited_s += time.perf_counter() - started
                self.queries += 1
            if attempt < self.retries:
                time.sleep(min(2.0, 0.2 * 2**attempt))
        reason = last.detail if last is not None else "no try"
        if last is not None and (last.reason == "unreachable" or (last.reason == "timeout" and not self._answers())):
            self.unreachable = reason  # down, not merely slow on this query: the run's other queries are not asked
        raise PrometheusError(f"{server}: no answer to {expr!r} after {self.retries + 1} tries: {reason}")

    def _answers(self) -> bool:
        """Whether the server answers at all (any HTTP status on ``/-/ready``), within the query time-out."""
        try:
            fetch(self.url.rstrip("/") + "/-/ready", timeout_s=min(self.timeout_s, 5.0), max_bytes=1 << 16, ok=_any)
        except FetchError:
            return False
        return True


def _any(status: int) -> bool:
    return True
