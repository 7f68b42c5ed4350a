"""Command line → model, server and workload class; secrets never come out."""

from __future__ import annotations

import dataclasses
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.resolve.cmdline import ModelGuess, guess_from_argv, looks_secret, redact_argv

# Fake credentials shaped like real ones (none is valid anywhere).
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
OPENAI_KEY = "sk-proj-Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVb"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
RANDOM_KEY = "q7Zr2XvK9pLm4TnW8sYb3HcJ6dFg1RkE"
PASSWORD_URL = "https://alice:s3cr3tP4ss@models.example.com/llama-3-8b"
ALL_SECRETS = [HF_TOKEN, OPENAI_KEY, AWS_KEY_ID, AWS_SECRET, JWT, RANDOM_KEY, "s3cr3tP4ss", PASSWORD_URL]


def g(cmd: str, env: dict[str, str] | None = None) -> ModelGuess:
    return guess_from_argv(shlex.split(cmd), env)


def strings_in(guess: ModelGuess) -> list[str]:
    return [v for v in dataclasses.astuple(guess) if isinstance(v, str)]


# --- recognised servers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        # vLLM
        ("vllm serve meta-llama/Llama-3.1-8B-Instruct", ("meta-llama/Llama-3.1-8B-Instruct", "vllm")),
        # shebang scripts appear in /proc as "<interpreter> <script> args…"
        (
            "/usr/bin/python3 /usr/local/bin/vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000",
            ("Qwen/Qwen2.5-7B-Instruct", "vllm"),
        ),
        (
            "python3 -m vllm.entrypoints.openai.api_server --model mistralai/Mistral-7B-Instruct-v0.3",
            ("mistralai/Mistral-7B-Instruct-v0.3", "vllm"),
        ),
        ("python -u -m vllm.entrypoints.openai.api_server --model=/models/llama-3.1-8b/", ("llama-3.1-8b", "vllm")),
        (
            "vllm serve /mnt/models --served-model-name llama3-8b-prod llama3 --tensor-parallel-size 2",
            ("llama3-8b-prod", "vllm"),
        ),
        ("vllm serve --model org/name --served_model_name=chat", ("chat", "vllm")),
        ("vllm serve /mnt/models", (None, "vllm")),  # the KServe mount point names no model
        ("vllm run-batch -i in.jsonl -o out.jsonl --model org/batch-model", ("org/batch-model", "vllm")),
        ("VLLM::EngineCore", (None, "vllm")),
        ("VLLM::Worker_TP1", (None, "vllm")),
        ("MYPREFIX::EngineCore_0", (None, "vllm")),
        # Text Generation Inference
        ("text-generation-launcher --model-id bigscience/bloom-560m --port 80", ("bigscience/bloom-560m", "tgi")),
        (
            "/opt/conda/bin/python3.11 /opt/conda/bin/text-generation-server serve "
            "meta-llama/Llama-3.1-8B-Instruct --uds-path /tmp/text-generation-server-0",
            ("meta-llama/Llama-3.1-8B-Instruct", "tgi"),
        ),
        # SGLang
        (
            "python3 -m sglang.launch_server --model-path Qwen/Qwen2.5-72B-Instruct --tp 4",
            ("Qwen/Qwen2.5-72B-Instruct", "sglang"),
        ),
        (
            "python -m sglang.launch_server --model-path /data/ckpt/deepseek-v3 --served-model-name dsv3",
            ("dsv3", "sglang"),
        ),
        ("sglang::scheduler_TP0", (None, "sglang")),
        # Triton
        ("tritonserver --model-repository=/models", (None, "triton")),
        ("/opt/tritonserver/bin/tritonserver --model-repository /models --load-model resnet50", ("resnet50", "triton")),
        (
            "tritonserver --model-repository /m --model-control-mode explicit --load-model a --load-model b",
            (None, "triton"),
        ),
        (
            "/opt/tritonserver/backends/python/triton_python_backend_stub /models/ensemble_llm/1/model.py x 1",
            ("ensemble_llm", "triton"),
        ),
        # Ollama
        ("ollama serve", (None, "ollama")),
        ("/usr/bin/ollama run llama3.1:8b", ("llama3.1:8b", "ollama")),
        (
            "/usr/bin/ollama runner --model /root/.ollama/models/blobs/"
            "sha256-6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa --port 40000",
            (None, "ollama"),
        ),
    ],
)
def test_inference_servers_are_recognised_with_their_model(cmd: str, expected: tuple[str | None, str]) -> None:
    model, server = expected
    assert g(cmd) == ModelGuess(model, server, "inference")


def test_tgi_model_comes_from_model_id_environment_variable() -> None:
    guess = g("text-generation-launcher --port 80", {"MODEL_ID": "HuggingFaceH4/zephyr-7b-beta"})
    assert guess == ModelGuess("HuggingFaceH4/zephyr-7b-beta", "tgi", "inference")


def test_tgi_option_wins_over_environment() -> None:
    assert g("text-generation-launcher --model-id a/b", {"MODEL_ID": "c/d"}).model == "a/b"


def test_served_model_name_is_preferred_over_model() -> None:
    assert g("vllm serve org/base-model --served-model-name friendly").model == "friendly"


def test_last_model_option_wins_like_argparse() -> None:
    assert g("python -m vllm.entrypoints.openai.api_server --model a/first --model a/second").model == "a/second"


def test_positional_after_options_is_not_mistaken_for_the_model() -> None:
    # "--api-key" takes a value; a naive "first non-option" would return it.
    guess = g("vllm serve --api-key notasecretbutakey --model org/real")
    assert guess.model == "org/real"


def test_hugging_face_cache_snapshot_path_gives_the_repository_id() -> None:
    cmd = (
        "vllm serve /root/.cache/huggingface/hub/models--meta-llama--Llama-3.1-8B-Instruct/snapshots/"
        "0e9e39f249a16976918f6564b8830bc894c89659"
    )
    assert g(cmd).model == "meta-llama/Llama-3.1-8B-Instruct"


def test_url_model_keeps_the_last_path_component_and_drops_the_query() -> None:
    guess = g("vllm serve --model s3://bucket/path/llama-3-8b?X-Amz-Signature=abc123")
    assert guess.model == "llama-3-8b"


@pytest.mark.parametrize(
    ("cmd", "path_model"),
    [
        ("vllm serve ./llama-local", "llama-local"),
        ("vllm serve ~/models/llama-home/", "llama-home"),
        ("vllm serve data/checkpoints/run-7/1", "run-7"),
    ],
)
def test_local_paths_keep_their_last_meaningful_component(cmd: str, path_model: str) -> None:
    assert g(cmd).model == path_model


def test_wrappers_before_the_command_are_skipped() -> None:
    guess = g(f"env HF_TOKEN={HF_TOKEN} CUDA_VISIBLE_DEVICES=0 nohup vllm serve org/model")
    assert guess == ModelGuess("org/model", "vllm", "inference")
    assert g("uv run --frozen vllm serve org/model").model == "org/model"


# --- workload classes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cmd",
    [
        "torchrun --nproc_per_node 8 train.py --lr 1e-4",
        "/usr/bin/python3 /usr/local/bin/torchrun --nnodes 2 train.py",
        "python -m torch.distributed.run --nproc-per-node=4 finetune.py",
        "python -m torch.distributed.launch --nproc_per_node=2 train.py",
        "deepspeed --num_gpus 8 train.py --deepspeed ds_config.json",
        "python -u -m deepspeed.launcher.launch --world_info=abc train.py",
        "accelerate launch --multi_gpu train.py",
        "python -m accelerate.commands.launch train.py",
    ],
)
def test_training_launchers_are_training(cmd: str) -> None:
    assert g(cmd) == ModelGuess(None, None, "training")


def test_torchrun_worker_is_training_by_its_environment() -> None:
    assert g("python -u train.py --epochs 3", {"TORCHELASTIC_RUN_ID": "none"}).workload_class == "training"


@pytest.mark.parametrize(
    "cmd",
    [
        "/opt/conda/bin/python -m ipykernel_launcher -f /root/.local/share/jupyter/runtime/kernel-1.json",
        "/usr/bin/python3 /usr/local/bin/jupyter-lab --ip 0.0.0.0",
        "jupyter notebook",
        "python /usr/lib/python3/dist-packages/ipykernel_launcher.py -f kernel.json",
    ],
)
def test_notebooks_are_experimentation(cmd: str) -> None:
    assert g(cmd) == ModelGuess(None, None, "experimentation")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        [""],
        ["python"],
        ["python", "-u"],
        ["python", "train.py"],
        ["bash", "-c", "sleep 1"],
        ["/pause"],
        ["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()", "--multiprocessing-fork"],
    ],
)
def test_unknown_programs_give_nothing(argv: list[str]) -> None:
    assert guess_from_argv(argv) == ModelGuess(None, None, None)


def test_a_server_wins_over_a_training_environment() -> None:
    guess = g("vllm serve org/model", {"TORCHELASTIC_RUN_ID": "x"})
    assert guess == ModelGuess("org/model", "vllm", "inference")


# --- secrets -----------------------------------------------------------------------------------------------

HOSTILE = [
    f"vllm serve org/model --api-key {OPENAI_KEY}",
    f"vllm serve {OPENAI_KEY}",
    f"vllm serve --model {HF_TOKEN}",
    f"vllm serve --model={AWS_SECRET}",
    f"vllm serve --api-key {OPENAI_KEY} --served-model-name {RANDOM_KEY} --model {JWT}",
    f"vllm serve {PASSWORD_URL}",
    f"python -m vllm.entrypoints.openai.api_server --model {PASSWORD_URL} --hf-token {HF_TOKEN}",
    f"env HF_TOKEN={HF_TOKEN} AWS_ACCESS_KEY_ID={AWS_KEY_ID} text-generation-launcher --model-id {AWS_KEY_ID}",
    f"python -m sglang.launch_server --model-path {RANDOM_KEY} --api-key {OPENAI_KEY}",
    f"tritonserver --model-repository s3://{AWS_KEY_ID}:{AWS_SECRET}@bucket/repo --load-model {JWT}",
    f"ollama run {HF_TOKEN}",
    f"text-generation-server serve {HF_TOKEN}",
]


@pytest.mark.parametrize("cmd", HOSTILE)
def test_no_secret_string_appears_anywhere_in_the_guess(cmd: str) -> None:
    guess = g(cmd, {"MODEL_ID": HF_TOKEN, "HF_MODEL_ID": OPENAI_KEY})
    for value in strings_in(guess):
        for secret in ALL_SECRETS:
            assert secret not in value
        assert not looks_secret(value)
    assert guess.server is not None  # the server is still recognised: only the secret is dropped


def test_secret_model_leaves_the_server_and_class_intact() -> None:
    assert g(f"vllm serve --model {HF_TOKEN}") == ModelGuess(None, "vllm", "inference")


def test_url_with_user_and_password_gives_no_model() -> None:
    assert g(f"vllm serve --model {PASSWORD_URL}").model is None
    assert g("vllm serve --model https://user:pass@host/x").model is None


def test_tgi_model_id_environment_holding_a_token_gives_no_model() -> None:
    assert g("text-generation-launcher", {"MODEL_ID": HF_TOKEN}).model is None


@pytest.mark.parametrize(
    "value",
    [
        HF_TOKEN,
        OPENAI_KEY,
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrSt",
        AWS_KEY_ID,
        AWS_SECRET,
        JWT,
        RANDOM_KEY,
        PASSWORD_URL,
        "https://user:pass@host/x",
        "ghp_1234567890abcdefghijABCDEFGHIJ123456",
        "glpat-AbCdEfGhIjKlMnOpQrSt",
        "xoxb-123456789012-abcdefghij",
        "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
        "nvapi-AbCdEfGhIjKlMnOpQrStUvWxYz",
        "-----BEGIN RSA PRIVATE KEY-----",
        "Bearer abcdefghijklmnop",
        f"HF_TOKEN={HF_TOKEN}",
        "password=hunter2",
        "https://host/model?token=abc",
        "0e9e39f249a16976918f6564b8830bc894c89659",  # 40 hex
        "sha256-6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa",
    ],
)
def test_credential_shapes_look_secret(value: str) -> None:
    assert looks_secret(value)


@pytest.mark.parametrize(
    "value",
    [
        "meta-llama/Llama-3.1-8B-Instruct",
        "Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8-dynamic",
        "Qwen3-Coder-480B-A35B-Instruct-FP8",
        "RedHatAI/Llama-4-Scout-17B-16E-Instruct-quantized.w4a16",
        "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M",
        "sentence-transformers/all-MiniLM-L6-v2",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "llama3.1:8b",
        "llama-3.1-8b",
        "task-specific-model",
        "resnet50",
        "/models/llama-3.1-8b/",
    ],
)
def test_real_model_names_do_not_look_secret(value: str) -> None:
    assert not looks_secret(value)


def test_redact_argv_hides_secret_option_values_in_both_forms() -> None:
    argv = [
        "vllm",
        "serve",
        "org/model",
        "--api-key",
        OPENAI_KEY,
        f"--hf-token={HF_TOKEN}",
        "--password",
        "hunter2",
        "--token",
        "plainword",
        "--max-num-batched-tokens",
        "8192",
        "--tokenizer",
        "org/tok",
    ]
    assert redact_argv(argv) == [
        "vllm",
        "serve",
        "org/model",
        "--api-key",
        "<redacted>",
        "--hf-token=<redacted>",
        "--password",
        "<redacted>",
        "--token",
        "<redacted>",
        "--max-num-batched-tokens",
        "8192",
        "--tokenizer",
        "org/tok",
    ]


def test_redact_argv_hides_environment_assignments_and_anything_that_looks_secret() -> None:
    argv = ["env", "HF_TOKEN=abc", "AWS_SECRET_ACCESS_KEY=xyz", "PATH=/bin", "vllm", "serve", PASSWORD_URL]
    out = redact_argv(argv)
    assert out == [
        "env",
        "HF_TOKEN=<redacted>",
        "AWS_SECRET_ACCESS_KEY=<redacted>",
        "PATH=/bin",
        "vllm",
        "serve",
        "<redacted>",
    ]


def test_redact_argv_hides_a_secret_value_under_an_innocent_option() -> None:
    assert redact_argv([f"--header={JWT}", "--model", HF_TOKEN]) == ["--header=<redacted>", "--model", "<redacted>"]


def test_secret_option_followed_by_another_option_redacts_nothing_extra() -> None:
    assert redact_argv(["--api-key", "--port", "8000"]) == ["--api-key", "--port", "8000"]


# --- properties --------------------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "vllm",
        "serve",
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "sglang.launch_server",
        "text-generation-launcher",
        "text-generation-server",
        "tritonserver",
        "ollama",
        "run",
        "torchrun",
        "env",
        "--model",
        "--model=",
        "--served-model-name",
        "--model-id",
        "--model-path",
        "--load-model",
        "--api-key",
        "VLLM::EngineCore",
        HF_TOKEN,
        OPENAI_KEY,
        AWS_SECRET,
        JWT,
        RANDOM_KEY,
        PASSWORD_URL,
        "org/model",
        "/models/x/",
        "",
        "-",
        "--",
        "=",
        "://",
    ]
)
_ARG = st.one_of(_PIECES, st.text(max_size=40), st.builds(lambda a, b: a + b, _PIECES, st.text(max_size=20)))


@settings(max_examples=500, deadline=None, database=None)
@given(
    argv=st.lists(_ARG, max_size=12),
    env=st.dictionaries(st.sampled_from(["MODEL_ID", "HF_MODEL_ID", "TORCHELASTIC_RUN_ID"]), _ARG),
)
def test_guess_never_raises_and_never_returns_a_secret(argv: list[str], env: dict[str, str]) -> None:
    guess = guess_from_argv(argv, env)
    for value in strings_in(guess):
        assert not looks_secret(value)
    assert guess.server in (None, "vllm", "tgi", "sglang", "triton", "ollama")
    assert guess.workload_class in (None, "inference", "training", "experimentation")
    if guess.model is not None:
        assert guess.model.strip() == guess.model
        assert guess.model.isprintable()
        for secret in ALL_SECRETS:
            assert secret not in guess.model


@settings(max_examples=300, deadline=None, database=None)
@given(argv=st.lists(_ARG, max_size=12))
def test_redacted_argv_keeps_length_and_hides_known_secrets(argv: list[str]) -> None:
    out = redact_argv(argv)
    assert len(out) == len(argv)
    for original, redacted in zip(argv, out, strict=True):
        # Tokens with a recognisable shape are found inside any text ...
        for secret in (HF_TOKEN, OPENAI_KEY, JWT, PASSWORD_URL):
            assert secret not in redacted
        # ... a bare 40-character AWS secret key only as a whole argument or value.
        if original in (AWS_SECRET, RANDOM_KEY):
            assert redacted == "<redacted>"
