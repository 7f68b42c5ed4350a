"""The attribution job's and the review's CronJobs, the serve Deployment and the reports server: locked down,
running the right command with flags the command accepts, and keeping the reports on a volume that outlives
each Job and that the reports server serves read-only."""

from __future__ import annotations

import argparse
from pathlib import PurePosixPath
from typing import Any

import pytest

from attribution.job import build_parser as attribute_parser
from attribution.review.cli import build_parser as review_parser
from attribution.review.render import FORMATS as REVIEW_FORMATS
from common.checks import http_url
from common.envflags import parse_args
from tests.deploy.conftest import DEPLOY, Manifest, render

WORKLOADS = ("CronJob", "Deployment")


def _pod(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = (
        workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        if workload["kind"] == "CronJob"
        else workload["spec"]["template"]["spec"]
    )
    return spec


def _named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def reports() -> list[Manifest]:
    return render(DEPLOY / "attribution")


def _args(cronjob: Manifest) -> tuple[str, argparse.Namespace]:
    """The subcommand a CronJob's container runs and its flags as that subcommand parses them."""
    (container,) = _pod(cronjob)["containers"]
    if container.get("command") is None:  # the image's entrypoint: gpuattr attribute
        return "attribute", parse_args(attribute_parser(), container["args"], {})
    assert container["command"] == ["gpuattr"], container["command"]
    subcommand, *flags = container["args"]
    parser = {"attribute": attribute_parser, "review": review_parser}[subcommand]()
    return subcommand, parse_args(parser, flags, {})


@pytest.mark.parametrize(("directory", "kinds"), [("attribution", WORKLOADS), ("attribution/serve", ("Deployment",))])
def test_every_workload_runs_locked_down(directory: str, kinds: tuple[str, ...]) -> None:
    objects = render(DEPLOY / directory)
    workloads = [o for o in objects if o["kind"] in kinds]
    assert workloads
    for workload in workloads:
        spec = _pod(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        (container,) = spec["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["limits"]["memory"]
        assert spec["serviceAccountName"] == "gpuattr-attribution"
    account = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert account["automountServiceAccountToken"] is False  # it needs no Kubernetes permission


def test_the_serve_deployment_runs_the_job_against_prometheus() -> None:
    deployment = next(o for o in render(DEPLOY / "attribution" / "serve") if o["kind"] == "Deployment")
    (container,) = _pod(deployment)["containers"]
    args = parse_args(attribute_parser(), container["args"], {})
    http_url(args.prometheus, "--prometheus")
    assert args.serve is not None and args.serve.endswith(f":{container['ports'][0]['containerPort']}")


def test_the_review_cronjob_runs_gpuattr_review_weekly_against_a_valid_prometheus_url(reports: list[Manifest]) -> None:
    cronjob = _named(reports, "CronJob", "gpuattr-review")
    subcommand, args = _args(cronjob)
    assert subcommand == "review"
    assert http_url(args.prometheus, "--prometheus")  # refuses anything but http(s)://host[:port]
    assert args.window == "7d"
    assert set(args.format.split(",")) <= set(REVIEW_FORMATS) and "html" in args.format
    _minute, _hour, day_of_month, month, day_of_week = cronjob["spec"]["schedule"].split()
    assert (day_of_month, month) == ("*", "*") and day_of_week.isdigit()  # one day a week
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize(("name", "subcommand"), [("gpuattr-attribution", "attribute"), ("gpuattr-review", "review")])
def test_each_cronjob_writes_its_reports_into_the_persistent_volume(
    reports: list[Manifest], name: str, subcommand: str
) -> None:
    claim = next(o for o in reports if o["kind"] == "PersistentVolumeClaim")
    cronjob = _named(reports, "CronJob", name)
    ran, args = _args(cronjob)
    assert ran == subcommand
    assert args.out is not None, f"{name} writes no report files"
    spec = _pod(cronjob)
    (container,) = spec["containers"]
    out = PurePosixPath(args.out)
    mount = next(m for m in container["volumeMounts"] if out.is_relative_to(m["mountPath"]))
    assert not mount.get("readOnly", False)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"], volume
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]  # the volume is writable


def test_the_two_cronjobs_write_apart(reports: list[Manifest]) -> None:
    outs = {_args(o)[1].out for o in reports if o["kind"] == "CronJob"}
    assert len(outs) == 2


def test_the_reports_server_serves_the_volume_read_only(reports: list[Manifest]) -> None:
    claim = next(o for o in reports if o["kind"] == "PersistentVolumeClaim")
    server = _named(reports, "Deployment", "gpuattr-reports")
    spec = _pod(server)
    (container,) = spec["containers"]
    (mount,) = container["volumeMounts"]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    assert mount["readOnly"] is True
    command = container["command"]
    assert command[:3] == ["python", "-m", "http.server"]
    assert command[command.index("--directory") + 1] == mount["mountPath"]
    assert command[-1] == str(container["ports"][0]["containerPort"])
    # every CronJob's --out is under what the server serves
    for cronjob in (o for o in reports if o["kind"] == "CronJob"):
        assert PurePosixPath(_args(cronjob)[1].out).is_relative_to(mount["mountPath"])
    service = _named(reports, "Service", "gpuattr-reports")
    assert service["spec"]["selector"] == server["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_a_read_write_once_volume_keeps_the_jobs_beside_the_server(reports: list[Manifest]) -> None:
    claim = next(o for o in reports if o["kind"] == "PersistentVolumeClaim")
    server = _named(reports, "Deployment", "gpuattr-reports")
    if claim["spec"]["accessModes"] != ["ReadWriteOnce"]:
        pytest.skip("a volume every node can mount needs no affinity")
    assert server["spec"]["strategy"]["type"] == "Recreate"  # a rollout cannot wait on a volume still attached
    labels = server["spec"]["template"]["metadata"]["labels"]
    for cronjob in (o for o in reports if o["kind"] == "CronJob"):
        (term,) = _pod(cronjob)["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"].items() <= labels.items()
