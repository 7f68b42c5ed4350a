"""Credentials on command lines never come out: not in a label, not in a log line, not in a report.

A simulated node runs the production code path end to end (fake NVML, fake ``/proc``, emulated API server,
kubelet pod-resources, a simulated vLLM server) with tokens, keys and passwords in its processes' command
lines and in its pods' container args and env. Everything the exporter and the attribution job produce is
searched for them: the exposition (Prometheus text, OpenMetrics, with the dcgm-exporter-compatible series),
every log record of every logger at DEBUG, what the job prints, and every report file it writes.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from attribution.job import main as attribute
from common import catalog as c
from common.exposition import scrape
from exporter.app import Exporter, build
from exporter.settings import ExporterSettings
from tests.exporter.resolve.test_cmdline import (
    ALL_SECRETS,
    AWS_KEY_ID,
    AWS_SECRET,
    HF_TOKEN,
    JWT,
    OPENAI_KEY,
    PASSWORD_URL,
    RANDOM_KEY,
)

SECRETS = sorted({*ALL_SECRETS, "alice:s3cr3tP4ss"}, key=len)
"""Fake credentials shaped like real ones, and the user:password part of the URL on its own."""
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
PHI = "microsoft/Phi-3-mini-4k-instruct"
VLLM_POD = ("llm", "vllm-llama-8b-7c9d5b6f4-s3crt")
TGI_POD = ("llm", "tgi-phi3-mini-6d8f9c7b5-k2v9q")
LEAKY_POD = ("llm", "vllm-token-as-model-0")
TRAINER_POD = ("ml-training", "finetune-with-keys-0")
SECRET_ENV = {
    "HF_TOKEN": HF_TOKEN,
    "HUGGING_FACE_HUB_TOKEN": HF_TOKEN,
    "OPENAI_API_KEY": OPENAI_KEY,
    "VLLM_API_KEY": RANDOM_KEY,
    "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "MODEL_URL": PASSWORD_URL,
}
VLLM_POD_ARGS = ["vllm", "serve", LLAMA, "--api-key", OPENAI_KEY, f"--hf-token={HF_TOKEN}", "--max-model-len", "8192"]
VLLM_CMDLINE = (
    f"env HF_TOKEN={HF_TOKEN} AWS_SECRET_ACCESS_KEY={AWS_SECRET} python3 -m vllm.entrypoints.openai.api_server "
    f"--model {LLAMA} --api-key={OPENAI_KEY} --hf-token {HF_TOKEN} --download-dir {PASSWORD_URL}"
).split()
TGI_CMDLINE = f"text-generation-launcher --model-id {PHI} --api-key {JWT} --env HF_TOKEN={HF_TOKEN}".split()
TRAINER_CMDLINE = [
    *f"/usr/bin/python3 /usr/local/bin/torchrun train.py --model {PASSWORD_URL}".split(),
    *["--header", f"Authorization: Bearer {JWT}", f"--aws-key={AWS_KEY_ID}", "--aws-secret", AWS_SECRET],
]


def _pod(namespace: str, name: str, owner: dict[str, str], args: list[str], devices: list[str]) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "name": name,
        "qos": "guaranteed",
        "labels": {"team": "search"},
        "owner": owner,
        "containers": [{"name": "main", "args": args, "env": SECRET_ENV, "devices": devices}],
    }


def secret_scenario() -> dict[str, Any]:
    """Four pods and a host process, every one of them launched with credentials on its command line."""
    return {
        "name": "secrets-on-command-lines",
        "node": {"name": "gpu-node-s1"},
        "gpus": [{"index": i} for i in range(3)],
        "pods": [
            _pod(*VLLM_POD, {"kind": "ReplicaSet", "name": "vllm-llama-8b-7c9d5b6f4"}, VLLM_POD_ARGS, ["0"]),
            _pod(
                *TGI_POD,
                {"kind": "ReplicaSet", "name": "tgi-phi3-mini-6d8f9c7b5"},
                ["text-generation-launcher", "--model-id", PHI, "--api-key", JWT],
                ["1::0"],
            ),
            _pod(
                *LEAKY_POD,
                {"kind": "StatefulSet", "name": "vllm-token-as-model"},
                ["vllm", "serve", HF_TOKEN],
                ["1::1"],
            ),
            _pod(
                *TRAINER_POD,
                {"kind": "Job", "name": "finetune-with-keys"},
                ["torchrun", "train.py", "--model", PASSWORD_URL, "--wandb-key", RANDOM_KEY],
                ["2"],
            ),
        ],
        "processes": [
            {
                "pid": 41021,
                "name": "vllm",
                "cmdline": VLLM_CMDLINE,
                "container": "/".join((*VLLM_POD, "main")),
                "gpus": [0],
                "vllm": {
                    "model": LLAMA,
                    "gpu_memory_utilization": 0.9,
                    "weights": "14.99GiB",
                    "kv_bytes_per_token": 131072,
                    "max_model_len": 8192,
                    "kv_usage": 0.2,
                    "generation_tokens_per_s": 100,
                },
                "sm": 0.6,
            },
            {
                "pid": 52001,
                "name": "text-generation",
                "cmdline": TGI_CMDLINE,
                "container": "/".join((*TGI_POD, "main")),
                "gpus": [1],
                "memory": "20GiB",
                "sm": 0.3,
            },
            {
                "pid": 52002,
                "name": "vllm",
                "cmdline": ["vllm", "serve", HF_TOKEN, "--api-key", OPENAI_KEY],
                "container": "/".join((*LEAKY_POD, "main")),
                "gpus": [1],
                "memory": "10GiB",
                "sm": 0.2,
            },
            {
                "pid": 60001,
                "name": "python",
                "cmdline": TRAINER_CMDLINE,
                "container": "/".join((*TRAINER_POD, "main")),
                "gpus": [2],
                "memory": "30GiB",
                "sm": 0.9,
            },
            {  # outside Kubernetes: its command name becomes a label
                "pid": 70001,
                "name": "python3",
                "cmdline": ["python3", "serve.py", "--model", PASSWORD_URL, "--token", HF_TOKEN, RANDOM_KEY],
                "gpus": [2],
                "memory": "2GiB",
                "sm": 0.05,
            },
        ],
    }


@dataclass
class Outputs:
    """Everything the node and the job produced, as text, by where it came from."""

    texts: dict[str, str]
    metrics: dict[str, list[tuple[dict[str, str], float]]]
    report: dict[str, Any]
    log_records: int


def _get(url: str, accept: str = "", gzipped: bool = False) -> str:
    request = urllib.request.Request(url, headers={"Accept": accept, "Accept-Encoding": "gzip" if gzipped else ""})
    with urllib.request.urlopen(request, timeout=10) as resp:
        body = resp.read()
    return (gzip.decompress(body) if gzipped else body).decode()


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outputs]:
    tmp = tmp_path_factory.mktemp("secrets")
    scenario = tmp / "secrets.yaml"
    scenario.write_text(yaml.safe_dump(secret_scenario()))
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # every logger, ours and the libraries', at its most talkative
    try:
        exporter = build(
            ExporterSettings(
                simulate=str(scenario),
                kubernetes=True,
                dcgm_compat=True,
                listen="127.0.0.1:0",
                interval=0.5,
                sim_start=60,
                hostname="gpu-node-s1",
                log_level="debug",
            )
        )
        exporter.start()
        try:
            yield _collect(exporter, tmp, handler)
        finally:
            exporter.stop()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


class _Capture(logging.Handler):
    """Every record of every logger, formatted as a log file would hold it (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _collect(exporter: Exporter, tmp: Path, handler: _Capture) -> Outputs:
    exporter.sampler.sample_once()
    url = exporter.server.url
    texts = {
        "exposition": _get(url),
        "exposition (OpenMetrics)": _get(url, "application/openmetrics-text; version=1.0.0"),
        "exposition (gzip)": _get(url, gzipped=True),
        "healthz": _get(url.replace("/metrics", "/healthz")),
    }
    sim = exporter.simulation
    assert sim is not None and len(sim.vllm) == 1
    server = sim.vllm[0]
    logs = tmp / "logs"
    logs.mkdir()
    log = _get(server.logs_url)
    # vLLM 0.10+ logs its non-default args at start-up, --api-key and --hf-token among them.
    args = {"api_key": [OPENAI_KEY], "hf_token": HF_TOKEN}
    log += f"INFO 01-01 00:00:00 [utils.py:233] non-default args: {args}\n"
    (logs / f"{server.namespace}_{server.pod}.log").write_text(log)
    out = tmp / "report"
    stdout, stderr = tmp / "stdout", tmp / "stderr"
    with stdout.open("w") as o, stderr.open("w") as e, contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = attribute(
            ["--vllm", f"{server.namespace}/{server.pod}={server.metrics_url}", "--exporter-url", url,
             "--window", "1m", "--logs", str(logs), "--out", str(out), "--format", "csv,json,html", "--json"]
        )  # fmt: skip
    assert code == 0, stderr.read_text()
    texts["job stdout"], texts["job stderr"] = stdout.read_text(), stderr.read_text()
    for path in sorted(out.iterdir()):
        texts[f"report {path.name}"] = path.read_text()
    texts["log records"] = "\n".join(handler.lines)
    return Outputs(texts, scrape(url), json.loads(texts["job stdout"]), len(handler.lines))


@pytest.mark.parametrize("secret", SECRETS)
def test_no_credential_reaches_the_exposition_the_logs_or_the_report(outputs: Outputs, secret: str) -> None:
    leaks = {where: text.count(secret) for where, text in outputs.texts.items() if secret in text}
    assert not leaks, f"{secret!r} found in {leaks}"


def test_the_outputs_searched_are_the_real_thing_so_the_search_cannot_pass_vacuously(outputs: Outputs) -> None:
    texts = outputs.texts
    assert {"report split.csv", "report split.json", "report report.html", "report costs_by_model.csv"} <= set(texts)
    for where in ("exposition", "exposition (OpenMetrics)", "exposition (gzip)"):
        assert "DCGM_FI_DEV_FB_USED" in texts[where]  # the dcgm-exporter-compatible series too
        for _, pod in (VLLM_POD, TGI_POD, LEAKY_POD, TRAINER_POD):
            assert pod in texts[where], (where, pod)
        assert LLAMA in texts[where] and PHI in texts[where]
    assert LLAMA in texts["report split.csv"] and VLLM_POD[1] in texts["report report.html"]
    assert outputs.log_records > 0 and "DEBUG" in texts["log records"]


def test_the_pods_keep_their_model_and_class_with_only_the_secret_left_out(outputs: Outputs) -> None:
    info = {(labels["namespace"], labels["pod"]): labels for labels, _ in outputs.metrics[c.POD_INFO.name]}
    assert (info[VLLM_POD]["model"], info[VLLM_POD]["workload_class"]) == (LLAMA, "inference")
    assert (info[TGI_POD]["model"], info[TGI_POD]["workload_class"]) == (PHI, "inference")
    assert (info[LEAKY_POD]["model"], info[LEAKY_POD]["workload_class"]) == ("", "inference")  # a token, dropped
    assert info[TRAINER_POD]["model"] == ""  # a URL with a password names no model
    assert info[TRAINER_POD]["workload_class"] == "training"
    memory = {(labels["pod"], labels["process"]): value for labels, value in outputs.metrics[c.CONTAINER_MEMORY.name]}
    assert memory[("", "python3")] == 2 * 2**30  # the host process is labelled by its command name only


def test_the_report_splits_the_vllm_server_it_found_behind_the_secrets(outputs: Outputs) -> None:
    (row,) = outputs.report["split"]
    assert (row["namespace"], row["pod"], row["model"]) == (*VLLM_POD, LLAMA)
    assert row["weights_source"] == "log"  # the start-up log was read, the line with the keys included
