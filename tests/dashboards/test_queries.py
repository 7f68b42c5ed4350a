"""Every query of every dashboard, with its variables substituted as Grafana would, against a real Prometheus.

Prometheus (Debian's package) scrapes every second: the exporters on the inference, MIG and MPS scenarios
(``gpuattr exporter`` subprocesses: the fake NVML library is process-global, and a node's sampling does not
hold this process's interpreter lock), and a small HTTP server of this module that stands in for what is not
simulated yet: the vLLM pods' own /metrics and the attribution job's output. It evaluates the generated recording rules
(``alerts/gpuattr-rules.yaml``) every second. Each query must parse and return something: no panel of any
dashboard is empty on these three nodes.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import yaml

from alerts import rules as r
from common import catalog as c
from common.exposition import scrape
from dashboards import build
from tests.conftest import ROOT, SCENARIOS
from tests.peers import prometheus, stop_process

pytestmark = pytest.mark.slow

GiB = 2**30
GENERATED = ROOT / "dashboards" / "generated"
RULES = ROOT / "alerts" / r.RULE_FILE
INFERENCE = SCENARIOS / "h100-inference-node.yaml"
MIG = SCENARIOS / "h100-8gpu-mig-node.yaml"
MPS = SCENARIOS / "h200-mps-node.yaml"  # MPS clients, a launch-bound pod, time-slicing with swings
READY_TIMEOUT_S = 40.0

# Grafana's built-in variables, at values that fit a Prometheus that has scraped every second for a few
# seconds ($__rate_interval: Grafana's 4 × the scrape interval).
BUILTINS = {
    "__rate_interval": "4s",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval": "1s",
    "__interval_ms": "1000",
}


# Stand-ins -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VllmServer:
    """A vLLM pod of the two scenarios, as its /metrics and the attribution job would describe it."""

    namespace: str
    pod: str
    utilization: float
    """The --gpu-memory-utilization it runs with."""
    weights_gib: float
    """Per GPU (tensor parallelism splits the weights)."""
    overhead_gib: float
    kv_used_gib: float
    """Peak KV cache in use per GPU over the job's window; KV idle is what NVML shows minus the rest."""
    generated_per_s: float
    prompt_per_s: float
    legacy_names: bool = False
    """Serves the metric names vLLM used before 0.9 (KV cache) and 0.11 (inter-token latency)."""


SERVERS = (
    VllmServer("llm", "vllm-llama-8b-6d9f7c5b8-x2k4p", 0.9, 15.0, 3.3, 12.0, 850.0, 2400.0),
    VllmServer("llm", "vllm-qwen-1-5b-7b8c9d6f5-m7qzt", 0.4, 3.0, 2.2, 2.0, 1900.0, 5200.0),
    VllmServer("llm", "vllm-llama-70b-0", 0.9, 65.0, 4.0, 3.0, 300.0, 900.0, legacy_names=True),
    VllmServer("llm", "vllm-qwen-7b-mig-0", 0.85, 14.2, 2.5, 6.0, 600.0, 1500.0),
)
LLAMA_8B, QWEN_1_5B = SERVERS[0], SERVERS[1]
ITL_CDF = ((0.01, 0.05), (0.025, 0.4), (0.05, 0.8), (0.075, 0.9), (0.1, 0.97), (0.25, 0.99), (0.5, 1.0))
"""Cumulative share of inter-token gaps at or below each bucket bound, in seconds."""
KV_HEADROOM = 1.25
"""The stand-in job's recommendation: weights + overhead + peak KV cache times this, rounded up to 5%."""


@dataclass
class Placement:
    """Where a server runs, as the exporter sees it: per GPU (or MIG instance) its memory and the device size."""

    model: str
    gpus: list[tuple[str, float, float]] = field(default_factory=list)
    """(gpu_uuid, bytes the server holds there, bytes the GPU or MIG instance has)."""


def _placements(exporter_urls: list[str]) -> dict[str, Placement]:
    found: dict[str, Placement] = {}
    for url in exporter_urls:
        metrics = scrape(url)
        models = {(lb["namespace"], lb["pod"]): lb["model"] for lb, _ in metrics[c.POD_INFO.name]}
        totals = {(lb["gpu_uuid"], lb["mig_instance"]): v for lb, v in metrics[c.GPU_MEMORY_TOTAL.name]}
        for labels, value in metrics[c.CONTAINER_MEMORY.name]:
            server = next((s for s in SERVERS if (s.namespace, s.pod) == (labels["namespace"], labels["pod"])), None)
            if server is None:
                continue
            place = found.setdefault(server.pod, Placement(models[(server.namespace, server.pod)]))
            place.gpus.append((labels["gpu_uuid"], value, totals[(labels["gpu_uuid"], labels["mig_instance"])]))
    assert sorted(found) == sorted(s.pod for s in SERVERS), "a vLLM pod of the scenarios is missing"
    return found


@dataclass(frozen=True)
class Split:
    weights: float
    kv_used: float
    kv_idle: float
    overhead: float
    recommended: float
    reclaimable: float


def split(server: VllmServer, held: float, total: float) -> Split:
    """The attribution job's answer for one GPU of one server, consistent with what NVML shows."""
    weights, overhead, kv_used = (x * GiB for x in (server.weights_gib, server.overhead_gib, server.kv_used_gib))
    kv_idle = held - weights - overhead - kv_used
    assert kv_idle >= 0, f"{server.pod}: the stand-in split exceeds what the scenario holds"
    recommended = math.ceil((weights + overhead + KV_HEADROOM * kv_used) / total * 20) / 20
    reclaimable = max(0.0, server.utilization - recommended) * total
    return Split(weights, kv_used, kv_idle, overhead, recommended, reclaimable)


def _line(name: str, labels: dict[str, str], value: float, at_ms: int | None = None) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value!r}" + ("" if at_ms is None else f" {at_ms}")


def attribution_page(places: dict[str, Placement]) -> str:
    """Stands in for the attribution job's and the capacity review's published series."""
    lines = []
    for server in SERVERS:
        place = places[server.pod]
        pod = {"namespace": server.namespace, "pod": server.pod}
        for gpu_uuid, held, total in place.gpus:
            s = split(server, held, total)
            on_gpu = {**pod, "gpu_uuid": gpu_uuid, "model": place.model}
            for component in ("weights", "kv_used", "kv_idle", "overhead"):
                lines.append(_line(c.VLLM_MEMORY.name, {**on_gpu, "component": component}, getattr(s, component)))
            lines.append(_line(c.VLLM_RECLAIMABLE.name, on_gpu, s.reclaimable))
        first = split(server, place.gpus[0][1], place.gpus[0][2])
        lines.append(_line(c.VLLM_GPU_MEMORY_UTILIZATION.name, {**pod, "model": place.model}, server.utilization))
        lines.append(
            _line(c.VLLM_RECOMMENDED_GPU_MEMORY_UTILIZATION.name, {**pod, "model": place.model}, first.recommended)
        )
    # ... and for the capacity review's headline series (`gpuattr review --pushgateway`)
    for team, allocated, used, idle in (("search", 4.0, 2.1, 30.0), ("research", 64.0, 20.0, 900.0)):
        labels = {"dimension": "team", "name": team, "window": "7d"}
        lines.append(_line(c.REVIEW_GPUS_ALLOCATED.name, labels, allocated))
        lines.append(_line(c.REVIEW_GPUS_USED.name, labels, used))
        lines.append(_line(c.REVIEW_IDLE_GPU_HOURS.name, labels, idle))
    lines.append(_line(c.REVIEW_GPUS_FREEABLE.name, {"window": "7d"}, 37.0))
    return "\n".join(lines) + "\n"


def vllm_page(places: dict[str, Placement], elapsed_s: float, at_ms: int | None = None) -> str:
    """Stands in for the vLLM pods' /metrics, with the namespace and pod labels a Kubernetes scrape attaches.
    Counters grow at the servers' token rates from when this module started. With ``at_ms`` every sample
    carries the moment its value is for, so a scrape answered late on a busy machine still gives the exact
    rate (Prometheus keeps a sample's own timestamp)."""
    lines = []
    for server in SERVERS:
        place = places[server.pod]
        labels = {"namespace": server.namespace, "pod": server.pod, "model_name": place.model}
        new = 1 if server.legacy_names else 0
        _, held, total = place.gpus[0]
        s = split(server, held, total)
        peak = s.kv_used / (s.kv_used + s.kv_idle)
        generated = server.generated_per_s * elapsed_s
        lines.append(_line(c.External.VLLM_GENERATION_TOKENS, labels, generated, at_ms))
        lines.append(_line(c.External.VLLM_PROMPT_TOKENS, labels, server.prompt_per_s * elapsed_s, at_ms))
        kv = peak * (0.5 + 0.5 * abs(math.sin(elapsed_s / 7)))
        lines.append(_line(c.External.VLLM_KV_CACHE_USAGE[new], labels, kv, at_ms))
        itl = c.External.VLLM_INTER_TOKEN_LATENCY[new]
        for bound, share in ITL_CDF:
            lines.append(_line(f"{itl}_bucket", {**labels, "le": str(bound)}, share * generated, at_ms))
        lines.append(_line(f"{itl}_bucket", {**labels, "le": "+Inf"}, generated, at_ms))
        lines.append(_line(f"{itl}_count", labels, generated, at_ms))
        lines.append(_line(f"{itl}_sum", labels, 0.03 * generated, at_ms))
    return "\n".join(lines) + "\n"


class StandIn:
    """One HTTP server: /vllm (the vLLM pods) and /attribution (the attribution job)."""

    def __init__(self, places: dict[str, Placement]) -> None:
        started = time.time()
        attribution = attribution_page(places).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/vllm":
                    now = time.time()
                    body = vllm_page(places, now - started, round(now * 1000)).encode()
                elif self.path == "/attribution":
                    body = attribution
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Prometheus ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def ask(self, expr: str) -> dict[str, Any]:
        """POST /api/v1/query; the JSON answer, also for a query Prometheus refuses (HTTP 400/422)."""
        data = urllib.parse.urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query", data=data, timeout=10) as resp:
                answer: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as err:
            answer = json.loads(err.read() or b"{}")
        return answer

    def result(self, expr: str) -> list[dict[str, Any]]:
        answer = self.ask(expr)
        assert answer.get("status") == "success", (expr, answer)
        return list(answer["data"]["result"])


def _wait_http(url: str, deadline: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up at {url}")
        time.sleep(0.2)


def rules_every_second(tmp_path: Path) -> Path:
    """The generated rule file with its groups' interval replaced by 1s, so recording rules fill quickly."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        group["interval"] = "1s"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


# The cluster ---------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    prom: Prom
    inference: str
    """The inference node's exporter target (its ``instance``)."""
    mig: str
    mps: str
    places: dict[str, Placement]

    def gpu_of(self, server: VllmServer) -> str:
        return self.places[server.pod].gpus[0][0]


READY = (
    'count(up{job=~"gpuattr|vllm|attribution"} == 1) == 5',
    f"count(count by (instance) ({c.POD_INFO.name})) == 3",
    f"{r.SM_PER_KERNEL}",
    f"{r.ALLOC_POD}",
    f"{r.SM_POD}",
    f"{r.VLLM_KV_USED}",
    f"count({r.ITL_P95}) == {len(SERVERS)}",
    c.GPU_XID_ERRORS.name,  # the inference node's notebook faults (XID 31) at second 70
    # enough history for rate() over $__rate_interval (4s) to see the whole window
    f"min(count_over_time({c.External.VLLM_GENERATION_TOKENS}[1m])) >= 7",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("dashboards")
    deadline = time.monotonic() + READY_TIMEOUT_S
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[BinaryIO] = []

    def node(name: str, scenario: Path, *extra: str) -> str:
        """``gpuattr exporter`` on ``scenario`` in its own process; its /metrics URL."""
        port = _free_port()
        logs.append((tmp / f"{name}-exporter.log").open("wb"))
        args = ["--simulate", str(scenario), "--kubernetes", "--listen", f"127.0.0.1:{port}", "--interval", "0.5"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gpuattr", "exporter", *args, "--sim-start", "60", *extra],
                cwd=ROOT,
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
            )
        )
        return f"http://127.0.0.1:{port}/metrics"

    stand_in: StandIn | None = None
    try:
        inference_url = node("inference", INFERENCE, "--dcgm-exporter-url", "simulated")
        mig_url = node("mig", MIG, "--dcgm-exporter-url", "simulated")
        mps_url = node("mps", MPS)
        urls = (inference_url, mig_url, mps_url)
        for url, what, proc in zip(urls, ("inference", "MIG", "MPS"), procs, strict=True):
            _wait_http(url, deadline, f"the {what} node's exporter", proc)
        while not all(scrape(url).get(c.POD_INFO.name) for url in urls):
            if time.monotonic() > deadline:
                pytest.fail("the simulated nodes never resolved their pods")
            time.sleep(0.2)
        places = _placements([inference_url, mig_url])
        stand_in = StandIn(places)
        inference, mig, mps = (url.removeprefix("http://").removesuffix("/metrics") for url in urls)
        stand_in_jobs = [
            {"job_name": name, "metrics_path": f"/{name}", "static_configs": [{"targets": [stand_in.address]}]}
            for name in ("vllm", "attribution")
        ]
        with prometheus(
            tmp,
            [inference, mig, mps],
            evaluation_interval="1s",
            rule_files=[rules_every_second(tmp)],
            extra_scrape_configs=stand_in_jobs,
        ) as peer:
            prom = Prom(peer.url)
            for expr in READY:
                while not prom.result(expr):
                    if time.monotonic() > deadline:
                        log = (tmp / "prometheus.log").read_text()[-2000:]
                        pytest.fail(f"never true within {READY_TIMEOUT_S}s: {expr}\n{log}")
                    time.sleep(0.25)
            time.sleep(1.5)  # one more rule evaluation and scrape, so every 1s-step subquery has a point
            yield Cluster(prom, inference, mig, mps, places)
    finally:
        if stand_in is not None:
            stand_in.close()
        for proc in procs:
            stop_process(proc)
        for node_log in logs:
            node_log.close()


# Grafana's substitution ------------------------------------------------------------------------------------


def boards() -> dict[str, dict[str, Any]]:
    return {name: json.loads((GENERATED / name).read_text(encoding="utf-8")) for name in sorted(build.render_all())}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape: a selected value of a multi-value variable, inside "…"."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def plain_escape(value: str) -> str:
    """Grafana's prometheusRegularEscape: the value of a single-value variable."""
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def values_for(board: dict[str, Any], chosen: dict[str, list[str] | str]) -> dict[str, str]:
    """What Grafana puts in for each variable: ``chosen`` values (a list: selected in a multi-value variable),
    else "All" (the variable's allValue) or a custom variable's default."""
    values = dict(BUILTINS)
    for var in board["templating"]["list"]:
        name = var["name"]
        if var["type"] == "datasource":
            continue
        pick = chosen.get(name)
        if isinstance(pick, list):
            assert var.get("multi"), name
            escaped = [regex_escape(v) for v in pick]
            values[name] = escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        elif pick is not None:
            values[name] = regex_escape(pick) if var.get("multi") or var.get("includeAll") else plain_escape(pick)
        elif var.get("includeAll") and var.get("allValue"):
            values[name] = var["allValue"]
        elif var["type"] in ("custom", "textbox", "constant"):
            values[name] = var["current"]["value"]
        else:
            raise AssertionError(f"no value for variable {name}")
    return values


def substitute(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"undefined variable ${name} in {text}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def variable_expr(query: str) -> tuple[str, str]:
    """``label_values(expr, label)`` -> (expr, label)."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert m, f"unsupported variable query {query}"
    return m.group(1), m.group(2)


def all_queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(board):
        for target in panel["targets"]:
            yield f"{panel['title']} / {target['refId']}", target["expr"]


def check_every_query(prom: Prom, board: dict[str, Any], chosen: dict[str, list[str] | str]) -> list[str]:
    values = values_for(board, chosen)
    problems = []
    for where, expr in all_queries(board):
        query = substitute(expr, values)
        answer = prom.ask(query)
        if answer.get("status") != "success":
            problems.append(f"{where}: {answer.get('error')}\n    {query}")
        elif not answer["data"]["result"]:
            problems.append(f"{where}: empty\n    {query}")
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        expr, label = variable_expr(substitute(var["query"], values))
        found = {s["metric"].get(label) for s in prom.result(expr)} - {None}
        if not found:
            problems.append(f"variable {var['name']}: no values\n    {expr}")
    return problems


# Tests -----------------------------------------------------------------------------------------------------

BOARDS = boards()


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_query_returns_data_with_every_variable_at_all(cluster: Cluster, name: str) -> None:
    board = BOARDS[name]
    problems = check_every_query(cluster.prom, board, {"gpu": cluster.gpu_of(QWEN_1_5B)})
    assert not problems, "\n".join(problems)
    assert sum(1 for _ in all_queries(board)) >= 8


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_query_returns_data_with_selected_values_escaped_as_grafana_does(cluster: Cluster, name: str) -> None:
    llama = cluster.places[LLAMA_8B.pod]
    chosen: dict[str, list[str] | str] = {
        "node": [cluster.inference, cluster.mig, cluster.mps],
        "namespace": [LLAMA_8B.namespace, "risk"],  # risk: the launch-bound scorer on the MPS node
        "model": [llama.model],  # "meta-llama/Llama-3.1-8B-Instruct": the dots get escaped
        "pod": [LLAMA_8B.pod],
        "gpu": cluster.gpu_of(LLAMA_8B),
        "source": "dcgm",  # nvml has no per-container activity on MIG instances
        "gpu_hour_price": "3.1",
    }
    problems = check_every_query(cluster.prom, BOARDS[name], chosen)
    assert not problems, "\n".join(problems)


def _panel(name: str, title: str) -> dict[str, Any]:
    return next(p for p in panels(BOARDS[name]) if p["title"] == title)


def _ask(cluster: Cluster, name: str, title: str, ref: str = "A", **chosen: list[str] | str) -> list[dict[str, Any]]:
    board = BOARDS[name]
    expr = next(t["expr"] for t in _panel(name, title)["targets"] if t["refId"] == ref)
    defaults: dict[str, list[str] | str] = {"gpu": cluster.gpu_of(QWEN_1_5B)}
    return cluster.prom.result(substitute(expr, values_for(board, {**defaults, **chosen})))


def test_variables_chain_node_to_namespace_to_model_and_node_to_gpu(cluster: Cluster) -> None:
    board = BOARDS["gpuattr-workload-model.json"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    values = values_for(board, {"node": [cluster.inference], "namespace": ["llm"]})

    def options(var: str) -> set[str]:
        expr, label = variable_expr(substitute(variables[var]["query"], values))
        return {s["metric"][label] for s in cluster.prom.result(expr)}

    assert options("namespace") == {"llm", "ml-training", "notebooks"}
    assert options("model") == {
        cluster.places[LLAMA_8B.pod].model,
        cluster.places[QWEN_1_5B.pod].model,
        "microsoft/Phi-3-mini-4k-instruct",
    }
    node_board = BOARDS["gpuattr-node-gpu.json"]
    gpu = next(v for v in node_board["templating"]["list"] if v["name"] == "gpu")
    expr, label = variable_expr(substitute(gpu["query"], values_for(node_board, {"node": [cluster.mig], "gpu": "x"})))
    assert len({s["metric"][label] for s in cluster.prom.result(expr)}) == 8


def test_the_cluster_counts_every_allocation_of_the_three_nodes(cluster: Cluster) -> None:
    (allocated,) = _ask(cluster, "gpuattr-cluster-efficiency.json", "GPUs allocated")
    # 4 GPUs + a time-sliced replica; 7 GPUs + 3 MIG instances; 2 MPS replicas, 1 GPU, 2 time-sliced replicas
    assert float(allocated["value"][1]) == 5 + 10 + 5


def test_shares_of_the_allocation_used_are_fractions_and_training_uses_most_of_its_gpus(cluster: Cluster) -> None:
    name = "gpuattr-cluster-efficiency.json"
    (share,) = _ask(cluster, name, "Share of the allocation used")
    assert 0.2 < float(share["value"][1]) < 1
    by_class = {
        s["metric"].get("workload_class", ""): float(s["value"][1])
        for s in _ask(cluster, name, "Share of the allocation used, by workload class")
    }
    assert by_class["training"] > 0.8  # torchrun at 91-96% on every GPU it holds
    assert by_class["experimentation"] == 0  # idle notebooks
    assert all(0 <= v <= 1 for v in by_class.values())
    teams = _ask(cluster, name, "Allocation, use and unused cost (${currency}) by team", "C")
    assert {s["metric"]["team"] for s in teams} == {"search", "research", "support-bot", "data", "nlp", "risk"}
    assert all(0 <= float(s["value"][1]) <= 1 for s in teams)


def test_the_shared_gpu_table_lists_the_time_sliced_and_mps_pods(cluster: Cluster) -> None:
    rows = _ask(cluster, "gpuattr-node-gpu.json", "Pods sharing a GPU")
    assert {(s["metric"]["instance"], s["metric"]["pod"]) for s in rows} == {
        (cluster.inference, QWEN_1_5B.pod),
        (cluster.inference, "tgi-phi3-mini-5f6d7c8b9-q9wrt"),
        (cluster.mps, "embed-encoder-6f8b9c7d5-q2w7x"),  # MPS clients
        (cluster.mps, "jupyter-carol-0"),
        (cluster.mps, "finetune-bert-base-0"),  # time-sliced
        (cluster.mps, "nightly-embeddings-29012345-7xk2p"),
    }
    kernel = {s["metric"]["pod"] for s in _ask(cluster, "gpuattr-node-gpu.json", "Pods sharing a GPU", "B")}
    assert "jupyter-carol-0" not in kernel and "embed-encoder-6f8b9c7d5-q2w7x" not in kernel  # unknown, not 0
    assert "finetune-bert-base-0" in kernel
    advertised = {
        s["metric"]["pod"]: float(s["value"][1])
        for s in _ask(cluster, "gpuattr-node-gpu.json", "Pods sharing a GPU", "D")
    }
    # each shared GPU of the MPS node is advertised as two replicas (<uuid>::0 and ::1)
    assert advertised["jupyter-carol-0"] == advertised["finetune-bert-base-0"] == 2


def test_the_mps_table_shows_the_servers_activity_and_its_clients_of_unknown_activity(cluster: Cluster) -> None:
    board = "gpuattr-node-gpu.json"
    (kernel,) = _ask(cluster, board, "MPS-shared GPUs", "A")
    (clients,) = _ask(cluster, board, "MPS-shared GPUs", "B")
    (unknown,) = _ask(cluster, board, "MPS-shared GPUs", "D")
    assert kernel["metric"]["instance"] == cluster.mps and float(kernel["value"][1]) > 0.9
    assert float(clients["value"][1]) == 2 and float(unknown["value"][1]) == 2


def test_the_launch_bound_pod_is_busy_but_doing_little(cluster: Cluster) -> None:
    rows = _ask(cluster, "gpuattr-workload-model.json", "Busy but doing little", "A")
    assert {s["metric"]["pod"] for s in rows} == {"fraud-scorer-7d5f6c8b9-lm3tz"}
    (ratio,) = _ask(cluster, "gpuattr-workload-model.json", "Busy but doing little", "B")
    assert float(ratio["value"][1]) < 0.01


def test_the_interference_panel_shows_the_vllm_server_on_the_gpu_and_every_pod_there(cluster: Cluster) -> None:
    title = "Interference: vLLM latency against the kernel time of the pods on this GPU"
    latency = _ask(cluster, "gpuattr-node-gpu.json", title, "A")
    activity = _ask(cluster, "gpuattr-node-gpu.json", title, "B")
    assert [s["metric"]["pod"] for s in latency] == [QWEN_1_5B.pod]
    assert 0.075 < float(latency[0]["value"][1]) < 0.1  # p95 of the stand-in's distribution
    assert {s["metric"]["pod"] for s in activity} == {QWEN_1_5B.pod, "tgi-phi3-mini-5f6d7c8b9-q9wrt"}


def test_vllm_memory_totals_are_the_attribution_jobs_numbers(cluster: Cluster) -> None:
    splits = [split(server, held, total) for server in SERVERS for _, held, total in cluster.places[server.pod].gpus]
    name = "gpuattr-vllm-memory.json"
    (reclaimable,) = _ask(cluster, name, "Reclaimable GPU memory")
    (kv_idle,) = _ask(cluster, name, "KV cache reserved, never used")
    (servers,) = _ask(cluster, name, "vLLM servers")
    assert float(reclaimable["value"][1]) == pytest.approx(sum(s.reclaimable for s in splits))
    assert float(kv_idle["value"][1]) == pytest.approx(sum(s.kv_idle for s in splits))
    assert float(servers["value"][1]) == len(SERVERS)


def test_cost_per_million_tokens_is_gpus_times_price_over_tokens(cluster: Cluster) -> None:
    model = cluster.places[LLAMA_8B.pod].model
    series = _ask(
        cluster, "gpuattr-workload-model.json", "Cost per million generated tokens (${currency})", model=[model]
    )
    (cost,) = [s for s in series if s["metric"]["model"] == model]
    expected = 1 * 2.5 / (LLAMA_8B.generated_per_s * 3600) * 1e6  # one GPU at the default price
    assert float(cost["value"][1]) == pytest.approx(expected, rel=0.05)
