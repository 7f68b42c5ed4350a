"""The Prometheus HTTP API, as the attribution job uses it: instant queries that aggregate in PromQL.

Works against Prometheus and anything that speaks its query API (Thanos, Mimir, VictoriaMetrics). The job
asks for ``max_over_time``/``quantile_over_time`` over its window, so its cost grows with the number of
servers, not with the number of samples.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

MAX_RESPONSE_BYTES = 256 * 2**20


class PrometheusError(RuntimeError):
    """A query that gave no answer; names the server, the query and why."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass
class PrometheusClient:
    url: str
    timeout_s: float = 60.0
    retries: int = 2
    waited_s: float = 0.0  # time spent waiting on the server, for the job's own accounting
    queries: int = 0
    warnings: list[str] = field(default_factory=list)

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant vector query; a scalar answer comes back as one sample without labels."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._get("/api/v1/query", params, expr)
        try:
            data: dict[str, Any] = body.get("data") or {}
            kind, result = data.get("resultType"), data.get("result", [])
            if kind == "scalar":
                return [Sample({}, float(result[1]))]
            if kind != "vector":
                raise PrometheusError(f"{self.url}: query {expr!r} gave a {kind}, expected an instant vector")
            return [
                Sample({str(k): str(v) for k, v in item.get("metric", {}).items()}, float(item["value"][1]))
                for item in result
            ]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise PrometheusError(f"{self.url}: answer to {expr!r} is not a Prometheus result: {exc!r}") from exc

    def _get(self, path: str, params: dict[str, str], expr: str) -> dict[str, Any]:
        url = self.url.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:  # noqa: S310 - configured URL
                    raw: bytes = resp.read(MAX_RESPONSE_BYTES + 1)
            except urllib.error.HTTPError as exc:
                detail = exc.read(2000).decode(errors="replace")
                if 400 <= exc.code < 500:  # a bad query does not get better by asking again
                    raise PrometheusError(f"{self.url}: query {expr!r} refused (HTTP {exc.code}): {detail}") from exc
                last = exc
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = exc
            else:
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise PrometheusError(f"{self.url}: answer to {expr!r} larger than {MAX_RESPONSE_BYTES} bytes")
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise PrometheusError(f"{self.url}: answer to {expr!r} is not JSON") from exc
                if body.get("status") != "success":
                    raise PrometheusError(f"{self.url}: query {expr!r} failed: {body.get('error', body)}")
                self.warnings += [str(w) for w in body.get("warnings", [])]
                return dict(body)
            finally:
                self.waited_s += time.perf_counter() - started
                self.queries += 1
            time.sleep(min(2.0, 0.2 * 2**attempt))
        reason = getattr(last, "reason", last)
        raise PrometheusError(f"{self.url}: no answer to {expr!r} after {self.retries + 1} tries: {reason}")
