"""Validate rendered Kubernetes manifests and the Prometheus scrape config, offline.

``python deploy/validate_manifests.py [-k 1.28 -k 1.37] [--scrape-config FILE] RENDERED.yaml...``

- Core kinds are validated against the Kubernetes OpenAPI JSON schemas that the ``kubernetes-validate``
  package ships (no network), in strict mode (an unknown field is an error), for every ``-k`` version.
- prometheus-operator kinds (ServiceMonitor, PodMonitor) are CRDs, absent from those schemas: they get a
  structural check of their own (apiVersion, kind, required fields, relabelling rules).
- Any other kind without a schema is an error, never a silent pass.
- Across a rendered file: no two objects with the same kind, namespace and name; every namespaced object
  carries a namespace.
- ``--scrape-config``: a structural check of a Prometheus configuration with ``kubernetes_sd_configs``
  (Debian's promtool is built without Kubernetes discovery, so it cannot check this file).

Exit status 0 when everything passed, 1 otherwise; every problem is printed as ``FILE: kind/name: what``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

DEFAULT_VERSIONS = ("1.28", "1.37")
"""Kubernetes versions to validate against: 1.28 (pod-resources v1 GA) and the newest schemas shipped."""

CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PriorityClass",
        "RuntimeClass",
        "StorageClass",
        "PersistentVolume",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
)

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RELABEL_ACTIONS = frozenset(
    {
        "replace",
        "keep",
        "drop",
        "keepequal",
        "dropequal",
        "hashmod",
        "labelmap",
        "labeldrop",
        "labelkeep",
        "lowercase",
        "uppercase",
    }
)
SD_ROLES = frozenset({"node", "pod", "service", "endpoints", "endpointslice", "ingress"})
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def _name(doc: Mapping[str, Any]) -> str:
    metadata = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')}/{metadata.get('name', '?') if isinstance(metadata, dict) else '?'}"


def check_relabelings(rules: object, where: str, *, camel_case: bool) -> list[str]:
    """Problems in a list of relabelling rules (prometheus-operator's camelCase or Prometheus's snake_case)."""
    source_key, target_key = ("sourceLabels", "targetLabel") if camel_case else ("source_labels", "target_label")
    if rules is None:
        return []
    if not isinstance(rules, list):
        return [f"{where}: must be a list of relabelling rules"]
    problems: list[str] = []
    for index, rule in enumerate(rules):
        at = f"{where}[{index}]"
        if not isinstance(rule, dict):
            problems.append(f"{at}: must be a mapping")
            continue
        action = str(rule.get("action", "replace")).lower()
        if action not in RELABEL_ACTIONS:
            problems.append(f"{at}.action: unknown action {rule.get('action')!r}")
        sources = rule.get(source_key, [])
        if not isinstance(sources, list) or not all(isinstance(s, str) and LABEL_NAME.match(s) for s in sources):
            problems.append(f"{at}.{source_key}: must be a list of label names, got {sources!r}")
        target = rule.get(target_key)
        if target is not None and not (isinstance(target, str) and LABEL_NAME.match(target)):
            problems.append(f"{at}.{target_key}: not a label name: {target!r}")
        if action in ("replace", "hashmod", "lowercase", "uppercase") and target is None:
            problems.append(f"{at}: action {action} needs {target_key}")
        if action in ("keep", "drop", "keepequal", "dropequal", "hashmod") and not sources:
            problems.append(f"{at}: action {action} needs {source_key}")
        regex = rule.get("regex")
        if regex is not None:
            try:
                re.compile(str(regex))
            except re.error as exc:
                problems.append(f"{at}.regex: {exc}")
        if action in ("labeldrop", "labelkeep", "labelmap") and regex is None:
            problems.append(f"{at}: action {action} needs regex")
    return problems


def _check_label_selector(selector: object, where: str) -> list[str]:
    if not isinstance(selector, dict):
        return [f"{where}: required (a label selector)"]
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return [f"{where}: selects everything; give matchLabels or matchExpressions"]
    return []


def _check_duration(value: object, where: str) -> list[str]:
    if value is None or (isinstance(value, str) and DURATION.match(value)):
        return []
    return [f"{where}: not a Prometheus duration: {value!r}"]


def check_monitor(doc: Mapping[str, Any]) -> list[str]:
    """Structural check of a prometheus-operator ServiceMonitor or PodMonitor (their CRD's required fields)."""
    kind = doc.get("kind")
    problems: list[str] = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion: expected monitoring.coreos.com/v1, got {doc.get('apiVersion')!r}")
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        problems.append("metadata.name: required")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [*problems, "spec: required"]
    problems += _check_label_selector(spec.get("selector"), "spec.selector")
    endpoints_key = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
    endpoints = spec.get(endpoints_key)
    if not isinstance(endpoints, list) or not endpoints:
        return [*problems, f"spec.{endpoints_key}: required, a non-empty list"]
    for index, endpoint in enumerate(endpoints):
        at = f"spec.{endpoints_key}[{index}]"
        if not isinstance(endpoint, dict):
            problems.append(f"{at}: must be a mapping")
            continue
        if not endpoint.get("port") and endpoint.get("targetPort") is None and endpoint.get("portNumber") is None:
            problems.append(f"{at}: names no port (port, targetPort or portNumber)")
        for key in ("interval", "scrapeTimeout"):
            problems += _check_duration(endpoint.get(key), f"{at}.{key}")
        path = endpoint.get("path")
        if path is not None and not (isinstance(path, str) and path.startswith("/")):
            problems.append(f"{at}.path: must start with /")
        problems += check_relabelings(endpoint.get("relabelings"), f"{at}.relabelings", camel_case=True)
        problems += check_relabelings(endpoint.get("metricRelabelings"), f"{at}.metricRelabelings", camel_case=True)
    return problems


CRD_CHECKS = {"ServiceMonitor": check_monitor, "PodMonitor": check_monitor}


def check_scrape_config(config: object) -> list[str]:
    """Structural check of a Prometheus configuration whose jobs discover targets in Kubernetes."""
    if not isinstance(config, dict) or not isinstance(config.get("scrape_configs"), list):
        return ["scrape_configs: required, a list of jobs"]
    problems: list[str] = []
    names: set[str] = set()
    for index, job in enumerate(config["scrape_configs"]):
        at = f"scrape_configs[{index}]"
        if not isinstance(job, dict):
            problems.append(f"{at}: must be a mapping")
            continue
        name = job.get("job_name")
        if not isinstance(name, str) or not name:
            problems.append(f"{at}.job_name: required")
        elif name in names:
            problems.append(f"{at}.job_name: duplicate {name!r}")
        else:
            names.add(name)
        for key in ("scrape_interval", "scrape_timeout"):
            problems += _check_duration(job.get(key), f"{at}.{key}")
        sd_configs = job.get("kubernetes_sd_configs")
        if not isinstance(sd_configs, list) or not sd_configs:
            problems.append(f"{at}.kubernetes_sd_configs: required, a non-empty list")
        else:
            for sd_index, sd in enumerate(sd_configs):
                role = sd.get("role") if isinstance(sd, dict) else None
                if role not in SD_ROLES:
                    problems.append(f"{at}.kubernetes_sd_configs[{sd_index}].role: unknown role {role!r}")
        problems += check_relabelings(job.get("relabel_configs"), f"{at}.relabel_configs", camel_case=False)
        problems += check_relabelings(
            job.get("metric_relabel_configs"), f"{at}.metric_relabel_configs", camel_case=False
        )
    return problems


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of ``path``; raises ValueError naming the file for anything else."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    result: list[dict[str, Any]] = []
    for index, doc in enumerate(documents):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise ValueError(f"{path}: document {index} is not a Kubernetes object (no kind/apiVersion)")
        result.append(doc)
    return result


def check_schema(doc: dict[str, Any], versions: Iterable[str]) -> list[str]:
    """Problems of one core object against the shipped schemas of each version (strict)."""
    # Imported here: only this check needs it, and validate.sh installs it (not a project dependency).
    kubernetes_validate = importlib.import_module("kubernetes_validate")

    problems: list[str] = []
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path) or "(root)"
            problems.append(f"Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(
                f"Kubernetes {version}: no schema for {doc.get('apiVersion')} {doc.get('kind')} "
                "(not a core kind and no structural check here: add one to CRD_CHECKS)"
            )
    return problems


def check_documents(documents: Sequence[dict[str, Any]], versions: Sequence[str]) -> list[str]:
    """Every problem of one rendered file's objects, each prefixed with ``kind/name``."""
    problems: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for doc in documents:
        kind = str(doc.get("kind"))
        raw_metadata = doc.get("metadata")
        metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
        key = (kind, str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        if key in seen:
            problems.append(f"{_name(doc)}: duplicate object in namespace {key[1]!r}")
        seen.add(key)
        if kind not in CLUSTER_SCOPED and not metadata.get("namespace"):
            problems.append(f"{_name(doc)}: namespaced object without metadata.namespace")
        check = CRD_CHECKS.get(kind)
        found = check(doc) if check is not None else check_schema(doc, versions)
        problems += [f"{_name(doc)}: {problem}" for problem in found]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("files", nargs="*", type=Path, help="rendered multi-document YAML files")
    parser.add_argument(
        "-k",
        "--kubernetes-version",
        action="append",
        dest="versions",
        help=f"Kubernetes version to validate against, repeatable (default: {', '.join(DEFAULT_VERSIONS)})",
    )
    parser.add_argument("--scrape-config", type=Path, help="a Prometheus configuration file to check")
    args = parser.parse_args(argv)
    versions: list[str] = args.versions or list(DEFAULT_VERSIONS)
    failed = False
    for path in args.files:
        try:
            documents = load_documents(path)
        except (OSError, ValueError) as exc:
            print(f"ERROR {exc}")
            failed = True
            continue
        if not documents:
            print(f"ERROR {path}: no objects")
            failed = True
            continue
        problems = check_documents(documents, versions)
        for problem in problems:
            print(f"ERROR {path}: {problem}")
        crds = sorted({_name(d) for d in documents if d.get("kind") in CRD_CHECKS})
        if crds:
            print(f"NOTE  {path}: {', '.join(crds)}: CRD, checked structurally (no schema offline)")
        if problems:
            failed = True
        else:
            print(f"OK    {path}: {len(documents)} objects (Kubernetes {', '.join(versions)}, strict)")
    if args.scrape_config is not None:
        try:
            config = yaml.safe_load(args.scrape_config.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            print(f"ERROR {args.scrape_config}: {exc}")
            return 1
        problems = check_scrape_config(config)
        for problem in problems:
            print(f"ERROR {args.scrape_config}: {problem}")
        if problems:
            failed = True
        else:
            print(f"OK    {args.scrape_config}: Prometheus scrape config (structural check)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
