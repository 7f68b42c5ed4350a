"""Model, serving engine and workload class guessed from a process's command line.

The command line itself is never exported: it can carry API keys and tokens. Only the model name (checked
by :func:`looks_secret`), the server name and the workload class leave this module. :func:`redact_argv`
exists for debugging output only.
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ENV_KEYS", "ModelGuess", "guess_from_argv", "looks_secret", "redact_argv"]

ENV_KEYS = frozenset({"MODEL_ID", "HF_MODEL_ID", "TORCHELASTIC_RUN_ID"})
"""The only environment variables :func:`guess_from_argv` reads; callers should pass no others."""

MAX_MODEL_CHARS = 200
"""Longest model name returned (characters); longer values are not names people use."""


@dataclass(frozen=True)
class ModelGuess:
    """What a command line says about the work a process does."""

    model: str | None
    """Model name (a Hugging Face id such as ``meta-llama/Llama-3.1-8B-Instruct``, a served name, or the
    last component of a local path); None when unknown or when the value looked like a secret."""
    server: str | None
    """``"vllm"``, ``"tgi"``, ``"sglang"``, ``"triton"``, ``"ollama"``, or None."""
    workload_class: str | None
    """``"inference"``, ``"training"``, ``"experimentation"``, or None."""


_NOTHING = ModelGuess(None, None, None)

# ---------------------------------------------------------------------------------------------------------
# Secrets

_URL_CREDENTIALS = r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s@]*:[^/\s@]*@"  # URL with user:password@
_SECRET_PATTERNS = re.compile(
    "|".join(
        [
            r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}",  # Hugging Face token
            r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}",  # OpenAI/Anthropic keys (sk-, sk-proj-, sk-ant-)
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}(?![0-9A-Z])",  # AWS key ids
            r"(?<![A-Za-z0-9])gh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens
            r"github_pat_[A-Za-z0-9_]{20,}",
            r"(?<![A-Za-z0-9])glpat-[A-Za-z0-9_-]{20,}",  # GitLab
            r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
            r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{30,}",  # Google API key
            r"(?<![A-Za-z0-9])nvapi-[A-Za-z0-9_-]{20,}",  # NVIDIA NGC
            r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",  # JWT (header.payload.signature)
            _URL_CREDENTIALS,
            r"-----BEGIN [A-Z ]*PRIVATE KEY",
            r"\b(?i:bearer|basic)\s+[A-Za-z0-9+/._~=-]{8,}",
            # key=value or query parameter whose key names a secret
            r"(?:^|[?&;,\s])[A-Za-z0-9_.-]*(?i:token|password|passwd|secret|api[-_]?key|signature|"
            r"credential|access[-_]?key|private[-_]?key|sig)=[^&\s]+",
        ]
    )
)
# AWS secret access key: a whole value of exactly 40 base64 characters with upper case, lower case and digits
# (not inside a longer text, where paths like "Llama/checkpoints/step1000…" would match too).
_AWS_SECRET_KEY = re.compile(r"(?=[^/].*[0-9])(?=.*[a-z])(?=.*[A-Z])[A-Za-z0-9/+]{40}")
_CANDIDATE = re.compile(r"[A-Za-z0-9+/=_.-]{20,}")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{32,}")
_ALNUM = re.compile(r"[A-Za-z0-9]")
# "Words" of a name: "Llama-3.1-8B-Instruct" → Llama, 3, 1, 8, B, Instruct; "GPTQ" and "AWQ" stay whole.
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_VOWELS = frozenset("aeiouAEIOU")
_MIN_RANDOM_CHARS = 20  # alphanumeric characters a token needs before it can count as random-looking


def _is_random_looking(token: str) -> bool:
    """A long token that reads like a random key rather than words and version numbers.

    Names are mostly words of three or more characters with vowels in them ("Meta-Llama-3.1-70B-Instruct");
    random base62/base64 keys are mostly one- and two-character fragments with few vowels. Tuned so that
    common Hugging Face ids pass and about 19 in 20 random keys of 24+ characters are flagged.
    """
    alnum = len(_ALNUM.findall(token))
    if alnum < _MIN_RANDOM_CHARS:
        return False
    if _HEX_RUN.search(token):  # digests, hex keys, commit hashes: never a name people use
        return True
    words = _WORD.findall(token)
    in_long_words = sum(len(w) for w in words if len(w) >= 3) / alnum
    letters = [c for c in token if c.isalpha()]
    vowel_share = sum(c in _VOWELS for c in letters) / len(letters) if letters else 0.0
    return in_long_words < 0.6 or (in_long_words < 0.75 and vowel_share < 0.2)


def looks_secret(value: str) -> bool:
    """True when ``value`` holds something that looks like a credential and must not be exported.

    Flags known token shapes (``hf_…``, ``sk-…``, ``AKIA…``, GitHub/GitLab/Slack/Google/NGC tokens, JWTs,
    PEM private keys, AWS secret keys as a whole value), URLs with ``user:password@``, ``key=value`` pairs
    whose key names a secret, long hex runs (32+ characters) and long random-looking tokens (a heuristic:
    see ``_is_random_looking``).
    """
    if _SECRET_PATTERNS.search(value) or _AWS_SECRET_KEY.fullmatch(value.rsplit("=", 1)[-1]):
        return True
    for chunk in _CANDIDATE.findall(value):
        # Whole (base64 keys contain '/'), and per path component ("org/<key>" would dilute the key).
        if _is_random_looking(chunk) or any(_is_random_looking(part) for part in chunk.split("/")):
            return True
    return False


_SECRET_OPTION = re.compile(
    r"(?:^|[-_])(?:token|password|passwd|pwd|secret|api[-_]?keys?|access[-_]?key|secret[-_]?key|"
    r"private[-_]?key|credentials?|authorization|auth[-_]?token)$",
    re.IGNORECASE,
)
_ENV_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
REDACTED = "<redacted>"


def _is_secret_option(name: str) -> bool:
    return bool(_SECRET_OPTION.search(name.lstrip("-")))


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with secret values replaced by ``"<redacted>"``; for debugging output only.

    Redacts the value of options that name a secret (``--api-key``, ``--token``, ``--hf-token``,
    ``--password``, …, in both ``--opt value`` and ``--opt=value`` forms), ``NAME=value`` assignments whose
    name does, and any argument :func:`looks_secret` flags.
    """
    out: list[str] = []
    redact_next = False
    for arg in argv:
        if redact_next and not arg.startswith("-"):
            out.append(REDACTED)
            redact_next = False
            continue
        redact_next = False
        if arg.startswith("-") and "=" in arg:
            name, value = arg.split("=", 1)
            if _is_secret_option(name) or looks_secret(value):
                out.append(f"{name}={REDACTED}")
            elif looks_secret(arg):
                out.append(REDACTED)
            else:
                out.append(arg)
        elif arg.startswith("-") and _is_secret_option(arg):
            out.append(arg)
            redact_next = True
        elif (m := _ENV_ASSIGNMENT.fullmatch(arg)) and _is_secret_option(m.group(1)):
            out.append(f"{m.group(1)}={REDACTED}")
        elif looks_secret(arg):
            out.append(REDACTED)
        else:
            out.append(arg)
    return out


# ---------------------------------------------------------------------------------------------------------
# Command-line shape


@dataclass(frozen=True)
class _Program:
    name: str  # basename of the executable or script, or "-m <module>" for modules, "-c" for inline code
    args: tuple[str, ...]

    @property
    def module(self) -> str | None:
        return self.name[3:] if self.name.startswith("-m ") else None


_PYTHON = re.compile(r"(?:python|pypy)(?:\d+(?:\.\d+)*)?[a-z]?")
_PYTHON_OPTIONS_WITH_VALUE = frozenset({"-W", "-X", "--check-hash-based-pycs"})
_PASS_THROUGH = frozenset({"nohup", "setsid", "exec"})
_RUNNERS = frozenset({"uv", "poetry", "pipenv", "pdm", "hatch"})  # "<runner> run [options] <command>"


def _basename(arg: str) -> str:
    return os.path.basename(arg.rstrip("/"))


def _strip_wrappers(argv: Sequence[str]) -> Sequence[str]:
    """Drop ``env VAR=…``, ``nohup``, ``setsid`` and ``uv run``-style prefixes."""
    i = 0
    while i < len(argv):
        base = _basename(argv[i])
        if base == "env":
            i += 1
            while i < len(argv) and (argv[i].startswith("-") or _ENV_ASSIGNMENT.fullmatch(argv[i])):
                i += 2 if argv[i] in ("-u", "--unset", "-C", "--chdir", "-S") else 1
        elif base in _PASS_THROUGH:
            i += 1
        elif base in _RUNNERS and i + 1 < len(argv) and argv[i + 1] == "run":
            i += 2
            while i < len(argv) and argv[i].startswith("-"):
                i += 1
        else:
            break
    return argv[i:]


def _program(argv: Sequence[str]) -> _Program | None:
    argv = _strip_wrappers(argv)
    if not argv:
        return None
    base = _basename(argv[0])
    if not _PYTHON.fullmatch(base):
        return _Program(base, tuple(argv[1:]))
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" and i + 1 < len(argv):
            return _Program(f"-m {argv[i + 1]}", tuple(argv[i + 2 :]))
        if arg.startswith("-m") and len(arg) > 2 and not arg.startswith("--"):
            return _Program(f"-m {arg[2:]}", tuple(argv[i + 1 :]))
        if arg == "-c":
            return _Program("-c", tuple(argv[i + 2 :]))
        if arg == "--":
            i += 1
            break
        if arg in _PYTHON_OPTIONS_WITH_VALUE:
            i += 2
        elif arg.startswith("-") and arg != "-":
            i += 1
        else:
            break
    if i >= len(argv):
        return _Program(base, ())
    return _Program(_basename(argv[i]), tuple(argv[i + 1 :]))


def _option_name(arg: str) -> str:
    return arg.split("=", 1)[0].replace("_", "-")


def _option_values(args: Sequence[str], names: frozenset[str]) -> list[str]:
    """Values of ``--name value`` and ``--name=value`` (underscores and dashes alike), in order."""
    values: list[str] = []
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name = _option_name(arg)
        if name not in names:
            continue
        if "=" in arg:
            values.append(arg.split("=", 1)[1])
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            values.append(args[i + 1])
    return values


def _last_option(args: Sequence[str], *names: str) -> str | None:
    """The value argparse would keep for a store option: the last one given."""
    values = _option_values(args, frozenset(names))
    return values[-1] if values else None


def _subcommand_positional(args: Sequence[str], subcommand: str) -> str | None:
    """``X`` in ``<program> <subcommand> X …``; only directly after the subcommand, where no option value
    can be mistaken for it."""
    if len(args) >= 2 and args[0] == subcommand and not args[1].startswith("-"):
        return args[1]
    return None


# ---------------------------------------------------------------------------------------------------------
# Model names

# Path components that name a mount point or a layout convention, not a model.
_GENERIC_COMPONENTS = frozenset(
    {
        "",
        ".",
        "..",
        "~",
        "model",
        "models",
        "weights",
        "checkpoint",
        "checkpoints",
        "ckpt",
        "snapshots",
        "hub",
        "huggingface",
        "hf",
        "cache",
        ".cache",
        "mnt",
        "data",
        "home",
        "root",
        "opt",
        "srv",
        "tmp",
        "var",
        "workspace",
    }
)
_HF_CACHE_DIR = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)(?:/|$)")
_HF_CACHE_DIR_NO_ORG = re.compile(r"(?:^|/)models--([^/]+)(?:/|$)")


def _clean(value: str) -> str | None:
    """``value`` if it can be exported as a label: printable, not too long, not a secret."""
    value = value.strip()
    if not value or len(value) > MAX_MODEL_CHARS or not value.isprintable() or looks_secret(value):
        return None
    return value


def _name_from_path(path: str) -> str | None:
    if m := _HF_CACHE_DIR.search(path):
        return f"{m.group(1)}/{m.group(2)}"
    if m := _HF_CACHE_DIR_NO_ORG.search(path):
        return m.group(1)
    for component in reversed(path.split("/")):
        if component.lower() not in _GENERIC_COMPONENTS and not component.isdigit():
            return component
    return None


def _model_name(raw: str) -> str | None:
    """A model argument as people know it: Hugging Face ids kept, local paths cut to their last component.

    ``org/name`` (one slash, not absolute) is taken as a Hugging Face id; anything absolute, relative with
    ``./``/``../``/``~``, or with two or more slashes as a local path. Layout names (``/mnt/models``,
    numeric version directories) are skipped; a Hugging Face cache directory gives back its repository id.
    """
    value = raw.strip()
    if not value or re.search(_URL_CREDENTIALS, value):
        return None
    is_url = "://" in value
    if is_url:
        try:
            value = urlsplit(value).path  # drops scheme, host, query string and fragment
        except ValueError:
            return None
    if _SECRET_PATTERNS.search(value):  # a credential anywhere in the path: refuse the whole value
        return None
    if is_url or value.startswith(("/", "./", "../", "~")) or value.count("/") >= 2:
        name = _name_from_path(value)
    else:
        name = value.rstrip("/")
    return _clean(name) if name is not None else None


def _served_name(values: Sequence[str]) -> str | None:
    """The first ``--served-model-name`` (it takes one or more names); kept verbatim, not path-cut."""
    return _clean(values[0]) if values else None


# ---------------------------------------------------------------------------------------------------------
# Servers and launchers

_VLLM_TITLE = re.compile(r"[^\s:]+::(?:EngineCore|Worker|APIServer|DPCoordinator)\w*")
_SERVED = frozenset({"--served-model-name"})


def _guess_vllm(program: _Program, argv0: str) -> ModelGuess | None:
    if argv0.startswith("VLLM::") or _VLLM_TITLE.match(argv0):  # setproctitle of engine and worker processes
        return ModelGuess(None, "vllm", "inference")
    module = program.module
    is_cli = program.name == "vllm"  # "vllm serve <model>", "vllm run-batch --model …", "vllm bench …"
    if not is_cli and not (module is not None and (module == "vllm" or module.startswith("vllm.entrypoints"))):
        return None
    served = _option_values(program.args, _SERVED)
    model = _served_name(served) if served else None
    if model is None:
        raw = _subcommand_positional(program.args, "serve") if is_cli else None
        raw = raw or _last_option(program.args, "--model")
        model = _model_name(raw) if raw else None
    return ModelGuess(model, "vllm", "inference")


def _guess_tgi(program: _Program, env: Mapping[str, str]) -> ModelGuess | None:
    if program.name in ("text-generation-launcher", "text-generation-router"):
        raw = _last_option(program.args, "--model-id") or env.get("MODEL_ID") or env.get("HF_MODEL_ID")
        return ModelGuess(_model_name(raw) if raw else None, "tgi", "inference")
    if program.name == "text-generation-server":  # shard processes: "text-generation-server serve <model>"
        raw = _subcommand_positional(program.args, "serve")
        return ModelGuess(_model_name(raw) if raw else None, "tgi", "inference")
    return None


def _guess_sglang(program: _Program, argv0: str) -> ModelGuess | None:
    if argv0.startswith("sglang::"):  # setproctitle of scheduler and detokenizer processes
        return ModelGuess(None, "sglang", "inference")
    module = program.module
    is_sglang = (module is not None and module.startswith("sglang.launch_server")) or (
        program.name == "sglang" and program.args[:1] == ("serve",)
    )
    if not is_sglang:
        return None
    served = _option_values(program.args, _SERVED)
    model = _served_name(served) if served else None
    if model is None and (raw := _last_option(program.args, "--model-path", "--model")):
        model = _model_name(raw)
    return ModelGuess(model, "sglang", "inference")


_TRITON_STUB_MODEL = re.compile(r"(?:^|/)([^/]+)/\d+/model\.py$")


def _guess_triton(program: _Program) -> ModelGuess | None:
    if program.name == "tritonserver":
        loaded = {v for v in _option_values(program.args, frozenset({"--load-model"})) if v != "*"}
        # One process serving several models cannot be attributed to one of them.
        model = _clean(loaded.pop()) if len(loaded) == 1 else None
        return ModelGuess(model, "triton", "inference")
    if program.name == "triton_python_backend_stub":  # "<repository>/<model>/<version>/model.py …"
        m = _TRITON_STUB_MODEL.search(program.args[0]) if program.args else None
        return ModelGuess(_clean(m.group(1)) if m else None, "triton", "inference")
    return None


def _guess_ollama(program: _Program) -> ModelGuess | None:
    if program.name == "ollama":
        raw = _subcommand_positional(program.args, "run")
        # "ollama serve" and its "ollama runner --model <blob>" children name no model (blobs are digests).
        return ModelGuess(_model_name(raw) if raw else None, "ollama", "inference")
    if program.name == "ollama_llama_server":
        return ModelGuess(None, "ollama", "inference")
    return None


_TRAINING_PROGRAMS = frozenset({"torchrun", "deepspeed"})
_TRAINING_MODULES = ("torch.distributed.run", "torch.distributed.launch", "deepspeed.launcher")
_NOTEBOOK_MODULES = frozenset(
    {"ipykernel_launcher", "ipykernel", "colab_kernel_launcher", "jupyter", "jupyterlab", "notebook"}
)


def _workload_class(program: _Program, env: Mapping[str, str]) -> str | None:
    module = program.module
    if (
        program.name in _TRAINING_PROGRAMS
        or (module is not None and module.startswith(_TRAINING_MODULES))
        or (program.name == "accelerate" and program.args[:1] == ("launch",))
        or program.name == "accelerate-launch"
        or module == "accelerate.commands.launch"
        or "TORCHELASTIC_RUN_ID" in env  # a worker started by torchrun / torch elastic
    ):
        return "training"
    if (
        (module is not None and module in _NOTEBOOK_MODULES)
        or program.name.startswith("jupyter")
        or program.name in ("ipykernel_launcher.py", "colab_kernel_launcher.py")
    ):
        return "experimentation"
    return None


def guess_from_argv(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ModelGuess:
    """Model, server and workload class from a process's argv (and optionally a few of its environment
    variables, see :data:`ENV_KEYS`).

    Servers are tried in order vLLM, TGI, SGLang, Triton, Ollama; the first that recognises the command
    answers. Never raises, and never returns a value :func:`looks_secret` flags.
    """
    env = env or {}
    program = _program(argv)
    if program is None:
        return _NOTHING
    argv0 = argv[0] if argv else ""
    guess = (
        _guess_vllm(program, argv0)
        or _guess_tgi(program, env)
        or _guess_sglang(program, argv0)
        or _guess_triton(program)
        or _guess_ollama(program)
    )
    if guess is None:
        cls = _workload_class(program, env)
        guess = ModelGuess(None, None, cls) if cls else _NOTHING
    if guess.model is not None and looks_secret(guess.model):  # belt and braces: every path already checks
        return ModelGuess(None, guess.server, guess.workload_class)
    return guess
