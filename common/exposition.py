"""Read a Prometheus exposition page (``/metrics``) the way Prometheus would, and parse it.

Built on :func:`common.fetch.fetch`: one bounded request (whole-response deadline, size cap), errors are
:class:`common.fetch.FetchError` naming the URL. The page is parsed with prometheus-client's parser.
"""

from __future__ import annotations

import ssl
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from common.fetch import DEFAULT_MAX_BYTES, fetch

__all__ = ["Sample", "scrape"]

Sample = tuple[dict[str, str], float]  # labels, value


def scrape(
    url: str, timeout_s: float = 5.0, context: ssl.SSLContext | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, list[Sample]]:
    """GET ``url`` within ``timeout_s`` seconds and ``max_bytes``, and parse it: name → [(labels, value)].

    A page that is not Prometheus text raises ValueError (prometheus-client's parser).
    """
    body = fetch(url, timeout_s=timeout_s, max_bytes=max_bytes, context=context).body.decode()
    out: dict[str, list[Sample]] = defaultdict(list)
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[s.name].append((dict(s.labels), float(s.value)))
    return out
