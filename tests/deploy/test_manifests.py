"""The deployment's security properties: each test fails if someone loosens what it checks.

The base is rendered (see conftest.py); the overlays too when a kustomize is available.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import BASE, DEPLOY, OVERLAYS, REPO, Manifest, only, render

PROC_MOUNT = "/host/proc"
POD_RESOURCES_DIR = "/var/lib/kubelet/pod-resources"
POD_RESOURCES_SOCKET = f"{POD_RESOURCES_DIR}/kubelet.sock"
EXPORTER_UID = 65532
READ_VERBS = {"get", "list", "watch"}


def pod_spec(objects: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = only(objects, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def exporter_container(objects: list[Manifest]) -> dict[str, Any]:
    containers = pod_spec(objects)["containers"]
    assert [c["name"] for c in containers] == ["exporter"], "one container, named exporter"
    container: dict[str, Any] = containers[0]
    return container


def host_paths(objects: list[Manifest]) -> dict[str, str]:
    """Volume name -> host path of every hostPath volume."""
    return {v["name"]: v["hostPath"]["path"] for v in pod_spec(objects).get("volumes", []) if "hostPath" in v}


def mounts(objects: list[Manifest]) -> dict[str, dict[str, Any]]:
    """Volume name -> its mount in the exporter container."""
    return {m["name"]: m for m in exporter_container(objects).get("volumeMounts", [])}


def every_container(objects: list[Manifest]) -> list[dict[str, Any]]:
    spec = pod_spec(objects)
    return [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]


def cpu_millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def memory_mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


# --- host access ----------------------------------------------------------------------------------------


def test_exporter_runs_in_the_host_pid_namespace(base: list[Manifest]) -> None:
    assert pod_spec(base)["hostPID"] is True


def test_exporter_uses_neither_host_network_nor_host_ipc(base: list[Manifest]) -> None:
    spec = pod_spec(base)
    assert spec.get("hostNetwork", False) is False
    assert spec.get("hostIPC", False) is False
    assert all("hostPort" not in port for port in exporter_container(base).get("ports", []))


def test_only_proc_and_the_pod_resources_directory_come_from_the_host(base: list[Manifest]) -> None:
    assert sorted(host_paths(base).values()) == ["/proc", POD_RESOURCES_DIR]


def test_host_proc_is_mounted_read_only_and_given_as_proc_root(base: list[Manifest]) -> None:
    volume = next(name for name, path in host_paths(base).items() if path == "/proc")
    mount = mounts(base)[volume]
    assert mount["mountPath"] == PROC_MOUNT
    assert mount["readOnly"] is True
    assert f"--proc-root={PROC_MOUNT}" in exporter_container(base)["args"]


def test_pod_resources_directory_not_the_socket_is_mounted_read_only(base: list[Manifest]) -> None:
    volume = next(name for name, path in host_paths(base).items() if path == POD_RESOURCES_DIR)
    mount = mounts(base)[volume]
    assert mount["mountPath"] == POD_RESOURCES_DIR
    assert mount["readOnly"] is True
    assert "subPath" not in mount, "a subPath mount would not follow a kubelet restart"
    assert f"--pod-resources-socket={POD_RESOURCES_SOCKET}" in exporter_container(base)["args"]


def test_every_host_mount_is_read_only(base: list[Manifest]) -> None:
    for volume in host_paths(base):
        assert mounts(base)[volume].get("readOnly") is True, volume


def test_kubernetes_resolution_is_on(base: list[Manifest]) -> None:
    assert "--kubernetes" in exporter_container(base)["args"]


# --- who the exporter runs as -------------------------------------------------------------------------


def test_exporter_runs_as_non_root_user_65532(base: list[Manifest]) -> None:
    pod_context = pod_spec(base)["securityContext"]
    container_context = exporter_container(base)["securityContext"]
    for context in (pod_context, container_context):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == EXPORTER_UID
        assert context.get("runAsGroup", EXPORTER_UID) != 0


def test_root_filesystem_is_read_only(base: list[Manifest]) -> None:
    for container in every_container(base):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]


def test_all_capabilities_are_dropped_and_none_added(base: list[Manifest]) -> None:
    for container in every_container(base):
        capabilities = container["securityContext"]["capabilities"]
        assert capabilities["drop"] == ["ALL"], container["name"]
        assert not capabilities.get("add"), container["name"]


def test_exporter_is_not_privileged_and_cannot_escalate(base: list[Manifest]) -> None:
    for container in every_container(base):
        context = container["securityContext"]
        assert context.get("privileged", False) is False, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert "procMount" not in context, container["name"]


def test_seccomp_profile_is_runtime_default(base: list[Manifest]) -> None:
    assert pod_spec(base)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in every_container(base):
        assert container["securityContext"].get("seccompProfile", {"type": "RuntimeDefault"}) == {
            "type": "RuntimeDefault"
        }


# --- configuration ------------------------------------------------------------------------------------------


def test_node_name_comes_from_the_downward_api(base: list[Manifest]) -> None:
    env = {e["name"]: e for e in exporter_container(base)["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_nvml_comes_from_the_nvidia_runtime_without_taking_a_gpu(base: list[Manifest]) -> None:
    container = exporter_container(base)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    for amounts in container["resources"].values():
        assert not any(name.startswith("nvidia.com/") for name in amounts), "the exporter must not hold a GPU"


def test_cpu_and_memory_requests_and_limits_are_set(base: list[Manifest]) -> None:
    resources = exporter_container(base)["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert 0 < cpu_millicores(requests["cpu"]) <= cpu_millicores(limits["cpu"])
    assert 0 < memory_mebibytes(requests["memory"]) <= memory_mebibytes(limits["memory"])


def test_probes_ask_healthz_for_liveness_and_readyz_for_readiness(base: list[Manifest]) -> None:
    container = exporter_container(base)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9835


def test_exporter_is_scheduled_on_gpu_nodes_and_tolerates_the_gpu_taint(base: list[Manifest]) -> None:
    spec = pod_spec(base)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_headless_service_selects_the_exporter_pods_on_the_metrics_port(base: list[Manifest]) -> None:
    service = only(base, "Service")
    pod_labels = only(base, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("metrics", 9835)]


# --- permissions --------------------------------------------------------------------------------------------


def test_cluster_role_only_reads(base: list[Manifest]) -> None:
    for rule in only(base, "ClusterRole")["rules"]:
        assert set(rule["verbs"]) <= READ_VERBS, rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert "resourceNames" not in rule or rule["resourceNames"], rule
        assert "nonResourceURLs" not in rule, rule


def test_cluster_role_reaches_only_pods_replicasets_and_jobs(base: list[Manifest]) -> None:
    granted = {
        (group, resource, verb)
        for rule in only(base, "ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted <= {
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("apps", "replicasets", "get"),
        ("batch", "jobs", "get"),
    }
    assert {("", "pods", "list"), ("", "pods", "watch")} <= granted, "the pod cache lists and watches pods"


def test_no_namespaced_role_grants_anything_else(base: list[Manifest]) -> None:
    assert not [obj for obj in base if obj["kind"] in ("Role", "RoleBinding")]
    assert [obj["kind"] for obj in base].count("ClusterRole") == 1


def test_the_cluster_role_is_bound_to_the_exporter_service_account_only(base: list[Manifest]) -> None:
    binding = only(base, "ClusterRoleBinding")
    account = only(base, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": only(base, "ClusterRole")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert pod_spec(base)["serviceAccountName"] == account["metadata"]["name"]


def test_everything_lives_in_the_gpuattr_namespace_which_alone_is_pod_security_exempt(
    base: list[Manifest],
) -> None:
    namespace = only(base, "Namespace")
    assert namespace["metadata"]["name"] == "gpuattr"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for obj in base:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "gpuattr", obj["kind"]


# --- overlays ----------------------------------------------------------------------------------------------


def _without_user(daemonset: Manifest) -> Manifest:
    stripped = copy.deepcopy(daemonset)
    spec = stripped["spec"]["template"]["spec"]
    for context in (spec["securityContext"], *(c["securityContext"] for c in spec["containers"])):
        for key in ("runAsUser", "runAsGroup", "runAsNonRoot"):
            context.pop(key, None)
    return stripped


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_overlays_keep_every_container_unprivileged_with_capabilities_dropped(overlay: Path) -> None:
    objects = render(overlay)
    assert pod_spec(objects)["hostPID"] is True
    assert sorted(host_paths(objects).values()) == ["/proc", POD_RESOURCES_DIR]
    for container in every_container(objects):
        context = container["securityContext"]
        assert context["capabilities"] == {"drop": ["ALL"]}, overlay.name
        assert context.get("privileged", False) is False, overlay.name
        assert context["allowPrivilegeEscalation"] is False, overlay.name
        assert context["readOnlyRootFilesystem"] is True, overlay.name
    for volume in host_paths(objects):
        assert mounts(objects)[volume]["readOnly"] is True, overlay.name
    assert only(objects, "ClusterRole") == only(render(BASE), "ClusterRole"), "overlays add no permission"


def test_root_podresources_overlay_changes_only_the_user() -> None:
    overlay = render(DEPLOY / "overlays" / "root-podresources")
    daemonset = only(overlay, "DaemonSet")
    container = exporter_container(overlay)["securityContext"]
    assert container["runAsUser"] == 0
    assert container["runAsNonRoot"] is False
    assert _without_user(daemonset) == _without_user(only(render(BASE), "DaemonSet"))
    others = [obj for obj in overlay if obj["kind"] != "DaemonSet"]
    assert others == [obj for obj in render(BASE) if obj["kind"] != "DaemonSet"]


def test_service_monitor_scrapes_the_metrics_port_and_drops_the_exporters_own_pod_labels() -> None:
    objects = render(DEPLOY / "overlays" / "prometheus-operator")
    monitor = only(objects, "ServiceMonitor")
    service = only(objects, "Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["honorLabels"] is True
    dropped = [rule["regex"] for rule in endpoint["relabelings"] if rule["action"] == "labeldrop"]
    assert any(all(re.fullmatch(regex, label) for label in ("namespace", "pod", "container")) for regex in dropped)
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"} in (
        endpoint["relabelings"]
    )


def test_plain_scrape_config_keeps_only_exporter_pods_and_labels_their_node() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["gpuattr"]}}]
    rules = job["relabel_configs"]
    keeps = {(tuple(r["source_labels"]), r["regex"]) for r in rules if r["action"] == "keep"}
    assert (("__meta_kubernetes_pod_label_app_kubernetes_io_name",), "gpuattr-exporter") in keeps
    assert (("__meta_kubernetes_pod_container_port_name",), "metrics") in keeps
    targets = {r["target_label"] for r in rules if r["action"] == "replace"}
    assert "node" in targets
    assert not targets & {"namespace", "pod", "container"}, "those name the workload, set by the exporter"


# --- the image ---------------------------------------------------------------------------------------------

DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def _final_stage(dockerfile: str) -> str:
    return dockerfile[[m.start() for m in re.finditer(r"(?m)^FROM ", dockerfile)][-1] :]


def test_image_base_is_pinned_by_tag_and_digest() -> None:
    match = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE)
    assert match is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", match.group(1))
    stages: set[str] = set()
    for line in re.findall(r"(?m)^FROM .*$", DOCKERFILE):
        words = line.split()
        # every stage starts from the pinned image, or from an earlier stage that did
        assert words[1].startswith("${PYTHON_IMAGE}") or words[1] in stages, line
        if len(words) == 4 and words[2].upper() == "AS":
            stages.add(words[3])


def test_image_runs_the_exporter_as_a_numeric_non_root_user() -> None:
    final = _final_stage(DOCKERFILE)
    users = re.findall(r"(?m)^USER (\S+)$", final)
    assert users == [f"{EXPORTER_UID}:{EXPORTER_UID}"]
    assert re.search(r'(?m)^ENTRYPOINT \["gpuattr", "exporter"\]$', final)
    assert "PYTHONDONTWRITEBYTECODE=1" in final
    assert re.search(r"(?m)^EXPOSE 9835$", final)


def test_grpc_stubs_are_generated_in_the_builder_and_grpcio_tools_stays_there() -> None:
    final = _final_stage(DOCKERFILE)
    builder = DOCKERFILE[: len(DOCKERFILE) - len(final)]
    assert "python -m exporter.resolve.proto.generate" in builder
    assert ".[kubernetes,otlp]" in builder
    assert "grpcio-tools" not in final
    assert re.findall(r"(?m)^COPY .*$", final) == ["COPY --from=builder /opt/gpuattr /opt/gpuattr"]


# --- the validator itself ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_manifests", DEPLOY / "validate_manifests.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validator_accepts_the_shipped_service_monitor(validator: ModuleType) -> None:
    objects = yaml.safe_load((DEPLOY / "overlays" / "prometheus-operator" / "servicemonitor.yaml").read_text())
    assert validator.check_monitor(objects) == []


def test_validator_rejects_a_service_monitor_without_selector_or_with_a_bad_relabelling(
    validator: ModuleType,
) -> None:
    monitor = yaml.safe_load((DEPLOY / "overlays" / "prometheus-operator" / "servicemonitor.yaml").read_text())
    del monitor["spec"]["selector"]
    monitor["spec"]["endpoints"][0]["relabelings"].append({"action": "labelsmash", "regex": "x"})
    problems = validator.check_monitor(monitor)
    assert any(p.startswith("spec.selector") for p in problems)
    assert any("unknown action 'labelsmash'" in p for p in problems)


def test_validator_rejects_a_scrape_job_without_kubernetes_discovery(validator: ModuleType) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text(encoding="utf-8"))
    assert validator.check_scrape_config(config) == []
    del config["scrape_configs"][0]["kubernetes_sd_configs"]
    assert validator.check_scrape_config(config) == [
        "scrape_configs[0].kubernetes_sd_configs: required, a non-empty list"
    ]


def test_validator_rejects_a_namespaced_object_without_namespace_and_duplicates(validator: ModuleType) -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "m"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": "metrics"}]},
    }
    problems = validator.check_documents([monitor, monitor], ["1.37"])
    assert "ServiceMonitor/m: namespaced object without metadata.namespace" in problems
    assert "ServiceMonitor/m: duplicate object in namespace ''" in problems


def _builder_copies(dockerfile: str) -> set[str]:
    builder = dockerfile[dockerfile.index(" AS builder") : dockerfile.index(" AS attribution-builder")]
    return {m.split()[1].rstrip("/") for m in re.findall(r"(?m)^COPY (?!--from)\S+.*$", builder)}


def test_the_agent_image_holds_the_core_the_agent_and_the_cli_and_no_simulator() -> None:
    assert _builder_copies(DOCKERFILE) == {"pyproject.toml", "common", "gpuattr", "exporter"}
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8")
    allowed = set(re.findall(r"(?m)^!(\S+)$", ignore))
    assert {"common", "gpuattr", "exporter", "attribution"} <= allowed
    assert "simulator" not in allowed and "tests" not in allowed


def test_every_module_level_import_of_the_agent_is_inside_the_image() -> None:
    """What the agent's modules import when loaded must be in the image: a module of the shared core, the
    agent or the command line, or a third-party package; never the simulator or the attribution job."""
    shipped = {"common", "gpuattr", "exporter"}
    project = {"common", "gpuattr", "exporter", "simulator", "attribution", "alerts", "dashboards", "tests"}
    outside: list[str] = []
    for part in sorted(shipped):
        for path in sorted((REPO / part).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:  # module level only: a subcommand may import its own part lazily
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                for name in names:
                    top = name.split(".")[0]
                    if top in project and top not in shipped:
                        outside.append(f"{path.relative_to(REPO)}: {name}")
    assert outside == []
