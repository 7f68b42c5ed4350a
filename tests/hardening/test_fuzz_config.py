"""Fuzzing every configuration a user hands us: scenario files, the exporter's flags and environment, the
alert configuration, and the model files the attribution side reads (config.json, safetensors headers and
their index).

Whatever the input, a parser returns its value or raises its own error (a ValueError) whose message names
the input; no other exception escapes, no message quotes a YAML bomb in full, and nothing hangs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from alerts.config import AlertConfig, AlertConfigError
from alerts.config import load_config as load_alert_config
from alerts.rules import render
from attribution.model_memory import ConfigError, WeightSizing, kv_sizing, weight_sizing
from attribution.model_memory import load_config as load_model_config
from attribution.safetensors_header import (
    DTYPE_BITS,
    INDEX_NAME,
    SafetensorsHeader,
    SafetensorsHeaderError,
    find_shards,
    read_header,
)
from common.envflags import env_name
from exporter.dcgm import parse_aliases
from exporter.settings import ExporterSettings, SettingsError, flag_name, parse
from simulator.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from tests.conftest import SCENARIOS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
"""Hypothesis examples per property (the scenario mutations get twice as many); raise it to fuzz for longer."""
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MESSAGE_LIMIT = 4000
"""Characters an error message may take for a small bad file: a bomb must not be quoted in full."""

# --- generic values ------------------------------------------------------------------------------------------

HUGE_INTS = st.integers(min_value=10**300, max_value=10**400) | st.integers(max_value=-(10**300), min_value=-(10**400))
ODD_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, -0.0, 1e308, -1e-308, 2**63, -(2**63)])
ODD_STRINGS = st.sampled_from(
    ["", "40GiB", "-1GiB", "1e400", "idle", "0.5", "NaN", ".inf", "3g.40gb", "mig:7:1", "9" * 400 + "TiB", "\x00"]
)
SCHEMA_KEYS = st.sampled_from(
    ["name", "index", "pid", "gpus", "memory", "sm", "points", "ramp", "burst", "period", "duty", "high", "end",
     "to", "vllm", "mig", "gi", "profile", "containers", "devices", "args", "env", "labels", "model"]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(),
    ODD_NUMBERS,
    st.text(max_size=12),
    ODD_STRINGS,
)
ANY = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SCHEMA_KEYS | st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
"""Anything YAML or JSON can hold."""

YAML_TEXT = st.text(
    alphabet=st.sampled_from([*"abcxyz019 :-[]{},&*!|>'\"#%@?.~\n\t", "\x00", "\ufeff", "é", "\x85", "\u2028"]),
    max_size=200,
)
"""Text dense in YAML syntax, so the scanner and parser take their odd branches."""


def _encoded(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


RAW_FILES = st.one_of(
    st.binary(max_size=300),
    YAML_TEXT.map(_encoded),
    st.builds(lambda doc: _encoded(yaml.safe_dump(doc, allow_unicode=True)), ANY),
)
"""File contents: bytes (invalid UTF-8 among them), YAML-like text, and YAML documents of any shape."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory the examples write their files into (module-scoped: hypothesis reuses it)."""
    return tmp_path_factory.mktemp("fuzz config")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


T = TypeVar("T")


def _attempt(call: Callable[[], T], refusal: type[Exception], what: str = "") -> tuple[T | None, str | None]:
    """(what ``call`` returned, None), or (None, the message of the ``refusal`` it raised); any other
    exception propagates and fails the test. The share of each shows in ``--hypothesis-show-statistics``."""
    try:
        result = call()
    except refusal as exc:
        event(f"{what or refusal.__name__}: refused")
        return None, str(exc)
    event(f"{what or refusal.__name__}: accepted")
    return result, None


def _names(message: str | None, name: str) -> bool:
    """A refusal's message names the input and stays short (a bomb is not quoted in full); no refusal passes."""
    return message is None or (name in message and len(message) < MESSAGE_LIMIT)


# --- a. scenario files ---------------------------------------------------------------------------------------

REAL_SCENARIOS = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(SCENARIOS.glob("*.yaml"))}
NodePath = tuple[Any, ...]
ODD_NUMBER_OF: dict[str, Callable[[float], float]] = {
    "negative": lambda n: -n if n else -1,
    "nan": lambda n: math.nan,
    "inf": lambda n: math.inf,
    "huge": lambda n: 10**400,
}
MUTATIONS = ["delete", "replace", "unknown key", "append", *ODD_NUMBER_OF]


def _node_paths(doc: Any, path: NodePath = ()) -> list[NodePath]:
    """The path (keys and indexes) to every node under ``doc``, the root excluded."""
    out: list[NodePath] = []
    children: list[tuple[Any, Any]] = []
    if isinstance(doc, dict):
        children = list(doc.items())
    elif isinstance(doc, list):
        children = list(enumerate(doc))
    for key, value in children:
        out.append((*path, key))
        out.extend(_node_paths(value, (*path, key)))
    return out


def _mutate(doc: Any, path: NodePath, how: str, value: Any) -> None:
    """One structural change at ``path``: delete the node, replace it with ``value``, give its mapping an
    unknown key, append to its list (a copy of its first item when ``value`` is None: a duplicate GPU or PID),
    or make its number negative, NaN, infinite or huge. A change that does not fit the node replaces it."""
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    node = parent[key]
    if how == "delete":
        del parent[key]
    elif how == "unknown key" and isinstance(node, dict):
        node[f"surprise_{len(node)}"] = value
    elif how == "append" and isinstance(node, list):
        node.append(copy.deepcopy(node[0]) if node and value is None else value)
    elif how in ODD_NUMBER_OF and isinstance(node, int | float) and not isinstance(node, bool):
        parent[key] = ODD_NUMBER_OF[how](node)
    else:
        parent[key] = value


@st.composite
def mutated_scenarios(draw: st.DrawFn) -> tuple[str, list[str], dict[str, Any]]:
    """A real scenario with up to three structural mutations; the list says which, for the failure report."""
    name = draw(st.sampled_from(sorted(REAL_SCENARIOS)))
    doc = copy.deepcopy(REAL_SCENARIOS[name])
    done: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        paths = _node_paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(MUTATIONS))
        value = draw(ANY)
        _mutate(doc, path, how, value)
        done.append(f"{how} {'.'.join(map(str, path))} ({value!r:.60})")
    return name, done, doc


def _mutated(name: str, path: NodePath, how: str) -> tuple[str, list[str], dict[str, Any]]:
    """One mutation of a shipped scenario, as :func:`mutated_scenarios` draws them (for explicit examples)."""
    doc = copy.deepcopy(REAL_SCENARIOS[name])
    _mutate(doc, path, how, None)
    return name, [f"{how} {'.'.join(map(str, path))}"], doc


@settings(FUZZ, max_examples=2 * EXAMPLES)
@given(case=mutated_scenarios())
@example(case=_mutated("h100-8gpu-mig-node.yaml", ("processes", 4, "vllm", "tensor_parallel"), "huge"))  # range()
@example(case=_mutated("h100-inference-node.yaml", ("processes", 0, "vllm", "kv_bytes_per_token"), "huge"))  # float //
def test_a_mutated_real_scenario_loads_or_is_refused_naming_the_file(
    workdir: Path, case: tuple[str, list[str], dict[str, Any]]
) -> None:
    name, mutations, doc = case
    path = _write(workdir / f"mutated {name}", yaml.safe_dump(doc, allow_unicode=True).encode())
    loaded, refused = _attempt(lambda: load_scenario(path), ScenarioError)
    assert _names(refused, str(path)), refused
    if not mutations:
        assert isinstance(loaded, Scenario), refused  # the shipped scenarios themselves load
    # The same document handed over as a dict, as tests build scenarios, meets the same checks.
    _, refused_dict = _attempt(lambda: parse_scenario(doc, source="<mutated dict>"), ScenarioError, "as a dict")
    assert _names(refused_dict, "<mutated dict>"), refused_dict
    assert (refused is None) == (refused_dict is None)


@FUZZ
@given(data=RAW_FILES, header=st.sampled_from(["", "name: fuzz\ngpus: [{index: 0}]\n", "name: fuzz\n"]))
@example(data=b"name: \xff\xfe\n", header="")  # invalid UTF-8: was a UnicodeDecodeError
@example(data=b"processes: [{pid: 1, name: a, gpus: [0], memory: 1, sm: {ramp: {to: 1}}}]\n", header="name: x\n")
@example(data=b"processes: [{pid: 1, name: a, gpus: [0], memory: 1, sm: {burst: {period: [1], duty: 1, high: 1}}}]",
         header="name: x\ngpus: [{index: 0}]\n")  # fmt: skip
@example(data=b"processes: [{pid: 1, name: a, gpus: [0], memory: 1, sm: {burst: {period: 2020-01-01}}}]", header="")
@example(data=b"processes: [{pid: 1, name: a, gpus: [0], memory: " + b"9" * 400 + b"}]", header="name: x\n")
def test_any_file_content_loads_or_is_refused_naming_the_file(workdir: Path, data: bytes, header: str) -> None:
    path = _write(workdir / "fuzzed scenario.yaml", header.encode() + data)
    loaded, refused = _attempt(lambda: load_scenario(path), ScenarioError)
    assert _names(refused, str(path)), refused
    assert refused is not None or (loaded is not None and loaded.gpus)  # what loads has the GPUs it must have


VLLM = "{model: m, gpu_memory_utilization: 0.9, weights: 1GiB, kv_bytes_per_token: 1, max_model_len: 1}"


@pytest.mark.parametrize(
    "text",
    [
        "gpus: [{index: 0, memory: .inf}]",
        "gpus: [{index: 0, memory: .nan}]",
        f"gpus: [{{index: 0, memory: .inf}}]\nprocesses: [{{pid: 1, name: a, gpus: [0], vllm: {VLLM}}}]",
        "gpus: [{index: 0, mig: [{gi: 1, profile: 1g.10gb, memory: .inf}]}]\n"
        f"processes: [{{pid: 1, name: a, gpus: [0], mig: 1, vllm: {VLLM}}}]",
        f"gpus: [{{index: 0}}]\nprocesses: [{{pid: 1, name: a, gpus: [0], vllm: {VLLM.replace('1GiB', '.inf')}}}]",
        "gpus: [{index: 0}]\nprocesses: [{pid: 1, name: a, gpus: [0], vllm: {model: m, gpu_memory_utilization: 0.9, "
        f"weights: {int(1.7e308)}, non_torch: {int(1.7e308)}, kv_bytes_per_token: 1, max_model_len: 1}}}}]",
        "gpus: [{index: 0}]\nprocesses: [{pid: 1, name: a, gpus: [0], memory: 1, sm: {burst: {period: .nan, duty: 1, "
        "high: 1}}}]",
        "gpus: [{index: 0}]\nprocesses: [{pid: 1, name: a, gpus: [0], vllm: {model: m, gpu_memory_utilization: 0.9, "
        "weights: 1GiB, kv_bytes_per_token: 1, max_model_len: 1, tensor_parallel: 1000000000}}]",
    ],
    ids=["inf-gpu", "nan-gpu", "inf-gpu-vllm", "inf-mig-vllm", "inf-weights", "weights-past-float", "nan-period",
         "a-billion-ranks"],
)  # fmt: skip
def test_a_scenario_with_infinite_or_overflowing_numbers_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "numbers.yaml", f"name: x\n{text}\n".encode())
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)  # each was an OverflowError, a billion-item list, or a NaN/inf the simulator tripped on
    assert _names(str(caught.value), str(path)), str(caught.value)


def _laughs(levels: int, anchor: str = "l") -> str:
    """A billion-laughs chain: ``&l{levels-1}`` stands for 9**levels copies of "lol"."""
    lines = [f"  - &{anchor}0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"  - &{anchor}{i} [" + ", ".join([f"*{anchor}{i - 1}"] * 9) + "]")
    return "\n".join(lines)


BOMB_HEADER = f"x-bomb:\n{_laughs(9)}\nname: x\ngpus: [{{index: 0}}]\n"
FAN = 300  # aliases per list: 300 pods × 300 containers × 300 args = 27 million validation errors


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20_000 + "]" * 20_000,
        "a: " + "{a: " * 5_000 + "1" + "}" * 5_000,
        "".join(f"{'  ' * i}a:\n" for i in range(1_000)),
        BOMB_HEADER,
        BOMB_HEADER + "processes: [{pid: 1, name: a, gpus: [0], memory: 1, sm: *l8}]\n",
        BOMB_HEADER + "processes: [{pid: 1, name: a, gpus: [0], memory: 1, sm: {points: *l8}}]\n",
        BOMB_HEADER + "processes: [{pid: 1, name: a, gpus: [0], memory: 1, cmdline: *l8}]\n",
        BOMB_HEADER + "pods: [{namespace: n, name: p, labels: {a: *l8}, containers: [{name: c}]}]\n",
        "name: &self [*self]\ngpus: [{index: 0}]\n",
        "x-c: &c {name: c, args: [" + ",".join(["1"] * FAN) + "]}\n"
        "x-p: &p {namespace: n, name: p, containers: [" + ",".join(["*c"] * FAN) + "]}\n"
        "name: x\ngpus: [{index: 0}]\npods: [" + ",".join(["*p"] * FAN) + "]\n",
    ],
    ids=["deep-flow-list", "deep-flow-map", "deep-block-map", "laughs-unused", "laughs-as-signal", "laughs-as-points",
         "laughs-as-cmdline", "laughs-as-label", "recursive-alias", "aliases-fanned-over-the-schema"],
)  # fmt: skip
def test_a_yaml_bomb_is_refused_quickly_with_a_short_message_naming_the_file(tmp_path: Path, text: str) -> None:
    # Before the fix: deep nesting raised RecursionError; quoting the laughs in the error took 40 s and 2 GB;
    # the fanned aliases gave 27 million validation errors (a hang). pytest-timeout fails a hang here.
    path = _write(tmp_path / "bomb.yaml", text.encode())
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert _names(str(caught.value), str(path)), str(caught.value)[:MESSAGE_LIMIT]


def test_a_scenario_whose_aliases_add_tens_of_thousands_of_nodes_still_loads(tmp_path: Path) -> None:
    # The bound is on what aliases add beyond the file, not on aliases: one 200-point signal shared by
    # 100 processes expands to 60,000 nodes, well within it.
    points = ", ".join(f"[{t}, {t % 2}]" for t in range(200))
    procs = "\n".join(f"  - {{pid: {pid}, name: a, gpus: [0], memory: 512MiB, sm: *wave}}" for pid in range(2, 101))
    text = (
        "name: x\ngpus: [{index: 0}]\nprocesses:\n"
        f"  - {{pid: 1, name: a, gpus: [0], memory: 512MiB, sm: &wave {{points: [{points}]}}}}\n{procs}\n"
    )
    scenario = load_scenario(_write(tmp_path / "shared.yaml", text.encode()))
    assert len(scenario.processes) == 100
    assert scenario.processes[99].sm.value(199) == 1


# --- b. exporter settings ------------------------------------------------------------------------------------

FIELDS = {f.name: f for f in dataclasses.fields(ExporterSettings)}
BOOL_FIELDS = sorted(n for n, f in FIELDS.items() if str(f.type) == "bool")
NUMBER_TEXT = st.one_of(
    st.floats().map(repr),
    st.integers().map(str),
    st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e400", "5", "1_000", " 7 ", "", "0x10", "five", "1e3", "٣"]),
    st.text(max_size=8),
)
SPECIAL_TEXT: dict[str, list[str]] = {
    "listen": ["127.0.0.1:0", "localhost", ":", "h:²", "[::1]:9835", "h:70000", "h:-1", ":9835", "h:٣"],
    "log_level": ["debug", "INFO", "loud", ""],
    "dcgm_exporter_url": ["simulated", "http://127.0.0.1:9400/metrics", ""],
    "dcgm_field_aliases": ["A=B", "A", "=B,", "", "A=B,,C=D"],
    "tls_cert": ["", "cert.pem"],
    "tls_key": ["", "key.pem"],
    "tls_client_ca": ["", "ca.pem"],
    "simulate": ["", "scenario.yaml"],
}
BOOL_TEXT = st.sampled_from(["true", "false", "yes", "no", "on", "off", "1", "0", "", "maybe", "TRUE", " yes "])


def _value_text(name: str) -> st.SearchStrategy[str]:
    kind = str(FIELDS[name].type)
    if kind in ("float", "int"):
        return NUMBER_TEXT
    if kind == "bool":
        return BOOL_TEXT | st.text(max_size=6)
    return st.sampled_from(SPECIAL_TEXT.get(name, ["x"])) | st.text(max_size=12)


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[list[str], dict[str, str], dict[str, str], dict[str, bool]]:
    """(argv, environ, the raw text each non-bool flag gave, the value each bool flag gave)."""
    argv: list[str] = []
    flags: dict[str, str] = {}
    bools: dict[str, bool] = {}
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=5)):
        if name in BOOL_FIELDS:
            on = draw(st.booleans())
            argv.append(flag_name(name) if on else "--no-" + flag_name(name)[2:])
            bools[name] = on
            continue
        value = draw(_value_text(name))
        argv += [f"{flag_name(name)}={value}"] if draw(st.booleans()) else [flag_name(name), value]
        flags[name] = value
    if draw(st.integers(0, 9)) == 0:  # now and then a stray token argparse must refuse
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["--bogus-flag", "stray", "-x", "--"])))
    environ = {
        env_name(name): draw(_value_text(name)) for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=5))
    }
    if draw(st.booleans()):
        environ["GPUATTR_NOT_A_SETTING"] = "1"
    return argv, environ, flags, bools


def _names_a_source(message: str, names: set[str]) -> bool:
    return any(flag_name(n) in message or env_name(n) in message for n in names)


@dataclasses.dataclass
class Parsed:
    settings: ExporterSettings | None = None
    refused: str | None = None  # the SettingsError's message
    exit_code: int | str | None = None  # argparse's, on a usage error
    usage: str = ""  # what argparse printed then


def _parse(argv: list[str], environ: dict[str, str]) -> Parsed:
    """Parse and validate as the exporter does at start-up."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return Parsed(settings=parse(ExporterSettings, argv, environ).validate())
    except SettingsError as exc:
        return Parsed(refused=str(exc))
    except SystemExit as exc:
        return Parsed(exit_code=exc.code, usage=stderr.getvalue())


@FUZZ
@given(case=command_lines())
@example(case=(["--listen", "h:²"], {}, {"listen": "h:²"}, {}))  # a non-ASCII digit: was a bare int() ValueError
@example(case=([], {"GPUATTR_INTERVAL": "nan"}, {}, {}))  # NaN passed validation
@example(case=([], {"GPUATTR_SIM_START": "inf"}, {}, {}))  # never checked at all
def test_flags_and_environment_give_settings_or_an_error_naming_the_flag(
    case: tuple[list[str], dict[str, str], dict[str, str], dict[str, bool]],
) -> None:
    argv, environ, flags, bools = case
    supplied = set(flags) | set(bools) | {n for n in FIELDS if env_name(n) in environ}
    parsed = _parse(argv, environ)
    event("usage error" if parsed.exit_code is not None else "refused" if parsed.refused else "accepted")
    if parsed.exit_code is not None:  # argparse: a usage error names the token it could not use
        assert parsed.exit_code == 2 and "usage: gpuattr" in parsed.usage, parsed.usage
        error = parsed.usage.split("error:", 1)[1]
        assert any(token in error for token in argv if token.strip()) or "unrecognized arguments" in error, error
        return
    if parsed.refused is not None or parsed.settings is None:
        assert parsed.refused is not None and _names_a_source(parsed.refused, supplied), (parsed.refused, supplied)
        return
    settings_ = parsed.settings
    for name, raw in flags.items():  # a flag wins over its environment variable, converted as its type says
        kind, value = str(FIELDS[name].type), getattr(settings_, name)
        if kind == "float":
            assert value == float(raw) and math.isfinite(value)
        elif kind == "int":
            assert value == int(raw)
        else:
            assert value == (None if raw == "" and "None" in kind else raw)
    for name, on in bools.items():  # the last of --x / --no-x wins
        assert getattr(settings_, name) is on
    assert all(math.isfinite(v) for v in dataclasses.asdict(settings_).values() if isinstance(v, float))
    # The exporter reads the aliases at start-up; a refusal names the flag too.
    _, refused = _attempt(lambda: parse_aliases(settings_.dcgm_field_aliases), ValueError, "aliases")
    assert _names(refused, flag_name("dcgm_field_aliases")), refused


# --- c. the alert configuration ------------------------------------------------------------------------------

ALERT_FIELDS = {f.name: f for f in dataclasses.fields(AlertConfig)}
DURATIONS = st.sampled_from(["30s", "5m", "1h30m", "1d", "2w", "0s", "5 minutes", "", "1.5h", "-5m", "m", "10ms"])
SEVERITIES = st.sampled_from(["critical", "warning", "info", "page", "", "WARNING"])


def _alert_value(name: str) -> st.SearchStrategy[Any]:
    if name.endswith(("_window", "_for", "_interval")):
        return DURATIONS | ANY
    if name.endswith("_severity"):
        return SEVERITIES | ANY
    if isinstance(getattr(AlertConfig(), name), float):
        return st.floats() | ODD_NUMBERS | HUGE_INTS | st.integers() | ANY
    return ANY


@st.composite
def alert_documents(draw: st.DrawFn) -> dict[Any, Any]:
    doc: dict[Any, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(ALERT_FIELDS)), max_size=6, unique=True)):
        doc[name] = draw(_alert_value(name))
    if draw(st.integers(0, 4)) == 0:
        doc[draw(st.text(max_size=10) | st.integers())] = draw(ANY)
    return doc


@FUZZ
@given(doc=alert_documents())
@example(doc={"idle_sm_threshold": 10**400})  # was an OverflowError
@example(doc={"memory_pressure_ratio": math.nan})  # loaded, and made an alert that never fires
def test_an_alert_configuration_loads_and_renders_or_is_refused_naming_the_file(
    workdir: Path, doc: dict[Any, Any]
) -> None:
    path = _write(workdir / "alerts config.yaml", yaml.safe_dump(doc, allow_unicode=True).encode())
    loaded, refused = _attempt(lambda: load_alert_config(path), AlertConfigError)
    if refused is not None or loaded is None:
        assert _names(refused, str(path)) and refused is not None, refused
        return
    config: AlertConfig = loaded
    for key, value in doc.items():  # everything the file said was taken, as the field's type
        taken = getattr(config, key)
        if isinstance(taken, float):
            assert taken == float(value)
        else:  # compared as YAML: NaN inside ``extra`` equals itself there
            assert yaml.safe_dump(taken) == yaml.safe_dump(value)
    assert all(math.isfinite(getattr(config, n)) for n in ALERT_FIELDS if isinstance(getattr(config, n), float))
    assert render(config)  # a configuration that loads gives rule files


@FUZZ
@given(data=RAW_FILES)
def test_any_alert_configuration_file_content_loads_or_is_refused_naming_the_file(workdir: Path, data: bytes) -> None:
    path = _write(workdir / "alerts raw.yaml", data)
    loaded, refused = _attempt(lambda: load_alert_config(path), AlertConfigError)
    assert _names(refused, str(path)), refused
    assert refused is not None or isinstance(loaded, AlertConfig)


@pytest.mark.parametrize(
    "data",
    [b"[" * 20_000, b"extra: " + b"{a: " * 5_000, f"x:\n{_laughs(9)}\n".encode(), f"extra:\n{_laughs(9)}\n".encode(),
     f"idle_window:\n{_laughs(9)}\n".encode(), b"idle_window: \xff"],
    ids=["deep-list", "deep-map", "laughs-unknown-key", "laughs-as-extra", "laughs-as-duration", "not-utf8"],
)  # fmt: skip
def test_an_alert_configuration_bomb_is_refused_with_a_short_message_naming_the_file(
    tmp_path: Path, data: bytes
) -> None:
    path = _write(tmp_path / "alerts.yaml", data)
    with pytest.raises(AlertConfigError) as caught:
        load_alert_config(path)
    assert _names(str(caught.value), str(path)), str(caught.value)[:MESSAGE_LIMIT]


# --- d. model files the attribution side reads ---------------------------------------------------------------
# kv_sizing over arbitrary configs is fuzzed in tests/attribution/model_memory/test_kv.py; what was missing is the
# file itself, integers past the float range, the weight estimate, and the safetensors headers and index a model
# directory holds.

JSON_FILES = st.one_of(
    st.binary(max_size=200),
    st.text(alphabet=st.sampled_from(list('{}[]:,"0123456789.-eEtrufalsnNIy \\u\n')), max_size=120).map(_encoded),
    st.builds(lambda doc: json.dumps(doc).encode(), ANY),
    st.sampled_from([b"[" * 100_000, b'{"a": ' * 50_000, b"1" * 5_000, b'{"a": ' + b"9" * 5_000 + b"}", b"NaN"]),
)


@FUZZ
@given(data=JSON_FILES)
@example(data=b'{"hidden_size": ' + b"9" * 5_000 + b"}")  # past Python's int digits limit: was a bare ValueError
def test_any_config_json_content_loads_or_is_refused_naming_the_file(workdir: Path, data: bytes) -> None:
    path = _write(workdir / "config.json", data)
    loaded, refused = _attempt(lambda: load_model_config(path), ConfigError)
    assert _names(refused, str(path)), refused
    assert refused is not None or isinstance(loaded, dict)


MODEL_KEYS = st.sampled_from(
    ["hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
     "num_key_value_heads", "head_dim", "tie_word_embeddings", "torch_dtype", "model_type", "quantization_config",
     "num_local_experts", "n_routed_experts", "moe_intermediate_size", "first_k_dense_replace", "kv_lora_rank",
     "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "attention_bias", "layer_types",
     "text_config", "n_shared_experts", "moe_layer_freq", "decoder_sparse_step", "mlp_only_layers"]
)  # fmt: skip
QUANTISATION = st.fixed_dictionaries(
    {"quant_method": st.sampled_from(["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors", "mxfp4", "x"])},
    optional={
        "bits": st.sampled_from([4, 8, 3, 0, -1]) | ANY,
        "group_size": st.sampled_from([128, -1, 0]) | ANY,
        "weight_block_size": st.sampled_from([[128, 128], [0, 1], [1]]) | ANY,
        "load_in_4bit": st.booleans(),
        "config_groups": ANY,
    },
)
PLAUSIBLE_MODEL = st.fixed_dictionaries(
    {
        "hidden_size": st.sampled_from([64, 4096, 8192]),
        "intermediate_size": st.sampled_from([256, 14336]),
        "vocab_size": st.sampled_from([1000, 128256]),
        "num_hidden_layers": st.integers(1, 80),
        "num_attention_heads": st.sampled_from([8, 32, 64]),
        "num_key_value_heads": st.sampled_from([1, 8]),
        "torch_dtype": st.sampled_from(["bfloat16", "float16", "float32"]),
    },
    optional={
        "model_type": st.sampled_from(["llama", "qwen2", "mixtral", "deepseek_v3", "gemma3_text", "gpt_oss"]),
        "quantization_config": QUANTISATION,
        "num_local_experts": st.sampled_from([8, 0]),
        "kv_lora_rank": st.sampled_from([512]),
        "layer_types": st.lists(st.sampled_from(["full_attention", "sliding_attention", "mamba"]), max_size=4),
    },
)
NOISY_MODEL = st.builds(
    lambda base, noise: {**base, **noise}, PLAUSIBLE_MODEL, st.dictionaries(MODEL_KEYS, ANY, max_size=3)
)


@FUZZ
@given(config=NOISY_MODEL | NOISY_MODEL.map(lambda d: {"text_config": d}) | st.dictionaries(MODEL_KEYS, ANY))
@example(config={"num_hidden_layers": 2, "layer_types": [["full_attention"]], "hidden_size": 8, "vocab_size": 8})
@example(config={"hidden_size": 10**150, "intermediate_size": 256, "vocab_size": 1000, "num_hidden_layers": 1,
                 "num_attention_heads": 8, "num_key_value_heads": 1})  # fmt: skip  # was an OverflowError
@example(config={"head_dim": 10**400, "num_hidden_layers": 1, "num_attention_heads": 8})  # a 400-digit KV size
def test_the_kv_and_weight_sizing_of_any_config_are_positive_sizes_or_value_errors(config: dict[str, Any]) -> None:
    # kv_sizing is fuzzed in tests/attribution/model_memory/test_kv.py, but not with integers past the float range.
    sizing, refused = _attempt(lambda: weight_sizing(config), ValueError, "weights")  # UnsupportedModel is one
    assert refused != "", "a refusal says why"
    assert refused is not None or (isinstance(sizing, WeightSizing) and sizing.weight_bytes > 0)
    kv, refused = _attempt(lambda: kv_sizing(config), ValueError, "kv")
    assert refused != "", "a refusal says why"
    assert refused is not None or (kv is not None and kv.kv_bytes_per_token > 0)


DTYPES = st.sampled_from(sorted(DTYPE_BITS)) | st.text(max_size=4) | ANY
DIMS = st.lists(st.integers(0, 8) | st.integers(-2, 2) | HUGE_INTS | ANY, max_size=3)
ENTRIES = st.fixed_dictionaries(
    {"dtype": DTYPES, "shape": DIMS | ANY, "data_offsets": st.lists(st.integers(0, 64) | HUGE_INTS | ANY, max_size=3)}
)
HEADERS = st.dictionaries(st.text(max_size=6) | st.just("__metadata__"), ENTRIES | ANY, max_size=4)


def _safetensors(header: bytes, data_bytes: int, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + b"\0" * data_bytes


@FUZZ
@given(
    content=st.one_of(
        st.builds(lambda h, n: _safetensors(json.dumps(h).encode(), n), HEADERS, st.integers(0, 64)),
        st.builds(_safetensors, st.binary(max_size=64), st.integers(0, 8)),
        st.builds(_safetensors, st.binary(max_size=16), st.integers(0, 8), st.integers(0, 2**64 - 1)),
        st.binary(max_size=40),
    )
)
@example(content=_safetensors(b'{"t": {"dtype": "F32", "shape": [1' + b"0" * 400 + b'], "data_offsets": [0, 4]}}', 4))
@example(content=_safetensors(b'{"t": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}', 4))
def test_any_safetensors_header_is_read_or_refused_naming_the_file(workdir: Path, content: bytes) -> None:
    path = _write(workdir / "model.safetensors", content)
    header, refused = _attempt(lambda: read_header(path), SafetensorsHeaderError)
    if refused is not None or header is None:
        assert _names(refused, str(path)) and refused is not None, refused
        return
    assert isinstance(header, SafetensorsHeader)
    assert sum(t.end - t.begin for t in header.tensors) == header.tensor_bytes <= header.data_bytes


SHARD_NAMES = st.sampled_from(["model.safetensors", "a.safetensors", "../x", "/etc/passwd", "", "nul\x00byte", "dir/"])


@FUZZ
@given(index=st.fixed_dictionaries({}, optional={"weight_map": st.dictionaries(st.text(max_size=4), SHARD_NAMES | ANY),
                                                 "metadata": ANY}) | ANY)  # fmt: skip
@example(index={"weight_map": {"w": ["model.safetensors"]}})  # an unhashable shard name: was a TypeError
@example(index={"weight_map": {"w": "nul\x00byte"}})  # a NUL in a path: was a bare ValueError from open()
def test_any_safetensors_index_gives_the_shards_or_is_refused_naming_a_file(
    index: Any, make_model_dir: Callable[[Any], Path]
) -> None:
    model_dir = make_model_dir(index)
    checkpoint, refused = _attempt(lambda: find_shards(model_dir), SafetensorsHeaderError)
    if refused is not None:  # the index, or a shard it names, is named: both lie inside the model directory
        assert _names(refused, str(model_dir)), refused
        return
    assert checkpoint is not None and checkpoint.found_by == "index"
    assert all(h.path.parent == model_dir for h in checkpoint.headers)


@pytest.fixture(scope="module")
def make_model_dir(workdir: Path) -> Callable[[Any], Path]:
    """A model directory holding one valid shard and the given index."""
    model_dir = workdir / "model dir"
    model_dir.mkdir()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    _write(model_dir / "model.safetensors", _safetensors(header, 8))

    def make(index: Any) -> Path:
        _write(model_dir / INDEX_NAME, json.dumps(index).encode())
        return model_dir

    return make


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("idle_memory_bytes: -5\n", "idle_memory_bytes must not be negative"),
        ("idle_sm_threshold: -0.5\n", "idle_sm_threshold must not be negative"),
        ('exporter_job: gpuattr"} or vector(1) #\n', "exporter_job must be a plain job name"),
    ],
)
def test_alert_settings_that_would_give_wrong_or_injected_rules_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(text)
    with pytest.raises(AlertConfigError, match=rf"^alert config {re.escape(str(path))}: {message}"):
        load_alert_config(path)
