"""Read a Prometheus exposition page (``/metrics``) the way Prometheus would, and parse it.

Built on :func:`common.fetch.fetch`: one bounded request (whole-response deadline, size cap), errors are
:class:`common.fetch.FetchError` naming the URL. The page is parsed with prometheus-client's parser.
"""

from __future__ import annotations

import ssl
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from common.fetch import DEFAULT_MAX_BYTES, HTML_ANSWER, FetchError, fetch, looks_like_html

__all__ = ["NotMetricsError", "Sample", "scrape"]

Sample = tuple[dict[str, str], float]  # labels, value


def scrape(
    url: str, timeout_s: float = 5.0, context: ssl.SSLContext | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, list[Sample]]:
    """GET ``url`` within ``timeout_s`` seconds and ``max_bytes``, and parse it: name → [(labels, value)].

    A page that is not Prometheus text (an HTML page, garbage) raises :class:`NotMetricsError` naming the URL.
    """
    answer = fetch(url, timeout_s=timeout_s, max_bytes=max_bytes, context=context)
    if looks_like_html(answer.body, answer.headers.get("content-type", "")):
        raise NotMetricsError(answer.url, "not_metrics", HTML_ANSWER.format(what="Prometheus text"))
    out: dict[str, list[Sample]] = defaultdict(list)
    try:
        for fam in text_string_to_metric_families(answer.body.decode("utf-8", errors="replace")):
            for s in fam.samples:
                out[s.name].append((dict(s.labels), float(s.value)))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise NotMetricsError(answer.url, "not_metrics", f"not Prometheus text: {str(exc)[:200]}") from exc
    return out


class NotMetricsError(FetchError, ValueError):
    """An answer that is not a Prometheus exposition page; a FetchError (reason ``not_metrics``) naming the URL,
    and a ValueError as the parser's errors were."""
