"""A Kubernetes API client, configured one way for every part that talks to the API server.

``kubernetes`` is an optional dependency: it is imported when a client is made, never at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def make_api_client(host: str | None = None, *, kubeconfig: str | None = None) -> ApiClient:
    """An API client: from ``kubeconfig`` when given, else for ``host`` (no auth), else in-cluster config."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    elif host is None:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        configuration.host = host.rstrip("/")
    return client.ApiClient(configuration)
