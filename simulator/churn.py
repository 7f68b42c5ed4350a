"""A churn scenario: thousands of short-lived pods and processes coming and going on one node.

Pods arrive at random over the run, live from half a minute to half an hour, and hold a time-sliced replica
of one GPU; inside, a server process may crash and be replaced by a new PID; a few processes run outside
Kubernetes. PIDs are never reused within a scenario (PID reuse has a test of its own). The exporter must
drop the series of everything that is gone and keep its memory and file descriptors flat while it runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from simulator.scenario import Scenario, parse_scenario

MODELS = (
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "microsoft/Phi-3-mini-4k-instruct",
)
APPS = 24  # Deployments the pods belong to: workloads stay a bounded set while pods churn
SLOTS_PER_GPU = 8  # time-sliced replicas each GPU advertises
FIRST_PID = 200_000


@dataclass(frozen=True)
class ChurnShape:
    gpus: int = 8
    seconds: float = 6 * 3600.0
    pods: int = 2000
    bare_processes: int = 200  # processes outside Kubernetes
    min_life_s: float = 30.0
    max_life_s: float = 1200.0
    restart_share: float = 0.3  # pods whose server process is replaced once by a new PID
    seed: int = 7


def churn_scenario_dict(shape: ChurnShape) -> dict[str, Any]:
    """The scenario as a dict; every lifetime lies within [0, shape.seconds]."""
    rng = random.Random(shape.seed)  # noqa: S311 - a reproducible scenario, not a secret
    free_at = {(gpu, slot): 0.0 for gpu in range(shape.gpus) for slot in range(SLOTS_PER_GPU)}
    pods: list[dict[str, Any]] = []
    processes: list[dict[str, Any]] = []
    pid = FIRST_PID
    starts = sorted(rng.uniform(0.0, shape.seconds - shape.min_life_s) for _ in range(shape.pods))
    for n, start in enumerate(starts):
        life = rng.uniform(shape.min_life_s, shape.max_life_s)
        stop = min(shape.seconds, start + life)
        slots = [key for key, at in free_at.items() if at <= start]
        if not slots:
            continue  # the node is full: this pod would stay Pending and never reach a GPU
        gpu, slot = rng.choice(slots)
        free_at[(gpu, slot)] = stop
        app = n % APPS
        model = MODELS[app % len(MODELS)]
        name = f"app{app}-{n:05d}"
        pods.append(
            {
                "namespace": f"team{app % 4}",
                "name": name,
                "labels": {"app": f"app{app}", "team": f"team{app % 4}"},
                "owner": {"kind": "Deployment", "name": f"app{app}"},
                "start": round(start, 3),
                "stop": round(stop, 3),
                "containers": [
                    {"name": "server", "args": ["--model", model], "devices": [f"{gpu}::{slot}"]},
                ],
            }
        )
        container = f"team{app % 4}/{name}/server"
        cmdline = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", model]
        begin = start + 1.0  # the container starts after the pod is created
        end = stop - 0.5 if stop - 0.5 > begin + 1.0 else stop
        lives = [(begin, end)]
        if rng.random() < shape.restart_share and end - begin > 10.0:
            crash = rng.uniform(begin + 2.0, end - 5.0)
            lives = [(begin, crash), (crash + 3.0, end)]  # crashed, restarted by the kubelet under a new PID
        for lo, hi in lives:
            pid += 1
            processes.append(
                {
                    "pid": pid,
                    "name": "python3",
                    "cmdline": cmdline,
                    "gpus": [gpu],
                    "memory": f"{rng.choice((2, 4, 6, 8))}GiB",
                    "sm": round(rng.uniform(0.01, 0.6), 3),
                    "mem_bw": round(rng.uniform(0.01, 0.3), 3),
                    "container": container,
                    "start": round(lo, 3),
                    "stop": round(hi, 3),
                }
            )
    for _ in range(shape.bare_processes):
        pid += 1
        start = rng.uniform(0.0, shape.seconds - shape.min_life_s)
        processes.append(
            {
                "pid": pid,
                "name": f"bench{pid % 16}",
                "gpus": [rng.randrange(shape.gpus)],
                "memory": "512MiB",
                "sm": 0.05,
                "start": round(start, 3),
                "stop": round(min(shape.seconds, start + rng.uniform(5.0, 600.0)), 3),
            }
        )
    return {
        "name": "churn",
        "description": f"{len(pods)} pods and {len(processes)} processes over {shape.seconds:.0f} s",
        "gpus": [{"index": i} for i in range(shape.gpus)],
        "pods": pods,
        "processes": processes,
    }


def churn_scenario(shape: ChurnShape) -> Scenario:
    return parse_scenario(churn_scenario_dict(shape))
