"""The attribution job's CronJob and Deployment: non-root, read-only root, no capabilities, no API token."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY, render


@pytest.mark.parametrize(("directory", "kind"), [("attribution", "CronJob"), ("attribution/serve", "Deployment")])
def test_the_job_runs_locked_down(directory: str, kind: str) -> None:
    objects = render(DEPLOY / directory)
    workload: dict[str, Any] = next(o for o in objects if o["kind"] == kind)
    spec = (
        workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        if kind == "CronJob"
        else workload["spec"]["template"]["spec"]
    )
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert any(a.startswith("--prometheus=") for a in container["args"])
    account = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert account["automountServiceAccountToken"] is False  # it needs no Kubernetes permission
