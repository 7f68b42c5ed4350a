"""common.envflags: every flag also a GPUATTR_* variable; the command line wins; bad values exit 2 naming it."""

from __future__ import annotations

import argparse

import pytest

from common.envflags import env_name, parse_args


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tool")
    p.add_argument("--price-per-gpu-hour", type=float, default=1.0, help="what a GPU-hour costs")
    p.add_argument("--dry-run", action="store_true", help="change nothing")
    p.add_argument("--namespace", action="append", help="namespaces to read")
    p.add_argument("--ports", type=int, nargs="+", default=[9090], help="ports to try")
    p.add_argument("--mode", choices=["fast", "slow"], default="fast", help="how")
    p.add_argument("--verbose", "-v", action="count", default=0, help="say more")
    return p


def _rivals(*, required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tool")
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--prometheus-url", help="read from Prometheus")
    group.add_argument("--from-file", help="read from a file")
    return p


def _exit_code_and_stderr(
    capsys: pytest.CaptureFixture[str], parser: argparse.ArgumentParser, argv: list[str], env: dict[str, str]
) -> tuple[object, str]:
    with pytest.raises(SystemExit) as info:
        parse_args(parser, argv, env)
    return info.value.code, capsys.readouterr().err


def test_the_variable_of_a_flag_is_its_destination_in_capitals_after_the_prefix() -> None:
    assert env_name("price_per_gpu_hour") == "GPUATTR_PRICE_PER_GPU_HOUR"
    assert env_name("dry_run") == "GPUATTR_DRY_RUN"


def test_a_variable_stands_in_for_an_absent_flag_converted_by_the_flags_type() -> None:
    args = parse_args(_parser(), [], {"GPUATTR_PRICE_PER_GPU_HOUR": "2.5", "GPUATTR_MODE": "slow"})
    assert args.price_per_gpu_hour == 2.5 and isinstance(args.price_per_gpu_hour, float)
    assert args.mode == "slow"
    assert parse_args(_parser(), [], {}).price_per_gpu_hour == 1.0  # no variable: the default


def test_the_command_line_wins_over_the_variable() -> None:
    args = parse_args(_parser(), ["--price-per-gpu-hour", "3"], {"GPUATTR_PRICE_PER_GPU_HOUR": "2.5"})
    assert args.price_per_gpu_hour == 3.0


def test_the_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUATTR_PRICE_PER_GPU_HOUR", "4.25")
    assert parse_args(_parser(), []).price_per_gpu_hour == 4.25


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("1", True), ("YES", True), ("on", True), ("0", False), ("false", False)]
)
def test_a_switch_reads_true_and_false_from_its_variable(raw: str, value: bool) -> None:
    assert parse_args(_parser(), [], {"GPUATTR_DRY_RUN": raw}).dry_run is value


def test_a_switch_on_the_command_line_wins_over_a_false_variable() -> None:
    assert parse_args(_parser(), ["--dry-run"], {"GPUATTR_DRY_RUN": "0"}).dry_run is True


def test_list_flags_split_their_variable_on_commas() -> None:
    args = parse_args(_parser(), [], {"GPUATTR_NAMESPACE": "llm, ml-training,,batch", "GPUATTR_PORTS": "80,443"})
    assert args.namespace == ["llm", "ml-training", "batch"]
    assert args.ports == [80, 443]


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"GPUATTR_PRICE_PER_GPU_HOUR": "cheap"}, ["GPUATTR_PRICE_PER_GPU_HOUR", "'cheap'", "not valid"]),
        ({"GPUATTR_PORTS": "80,http"}, ["GPUATTR_PORTS", "'http'"]),
        ({"GPUATTR_MODE": "warp"}, ["GPUATTR_MODE", "'warp'", "not one of fast, slow"]),
        ({"GPUATTR_DRY_RUN": "maybe"}, ["GPUATTR_DRY_RUN", "expected true or false"]),
        ({"GPUATTR_VERBOSE": "3"}, ["GPUATTR_VERBOSE", "cannot be set from the environment"]),
    ],
)
def test_a_variable_that_does_not_convert_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], words: list[str]
) -> None:
    code, err = _exit_code_and_stderr(capsys, _parser(), [], env)
    assert code == 2
    assert "tool: error:" in err and "Traceback" not in err
    for word in words:
        assert word in err


def test_a_required_group_is_satisfied_by_a_variable() -> None:
    args = parse_args(_rivals(), [], {"GPUATTR_FROM_FILE": "usage.csv"})
    assert (args.from_file, args.prometheus_url) == ("usage.csv", None)


def test_a_required_group_with_neither_flag_nor_variable_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_code_and_stderr(capsys, _rivals(), [], {})
    assert code == 2 and "one of the arguments --prometheus-url --from-file is required" in err


def test_a_required_flag_is_satisfied_by_its_variable() -> None:
    p = argparse.ArgumentParser(prog="tool")
    p.add_argument("--node-name", required=True)
    assert parse_args(p, [], {"GPUATTR_NODE_NAME": "gpu-node-a1"}).node_name == "gpu-node-a1"


def test_rivals_from_the_variable_and_the_command_line_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"GPUATTR_PROMETHEUS_URL": "http://prom:9090"}
    code, err = _exit_code_and_stderr(capsys, _rivals(), ["--from-file", "usage.csv"], env)
    assert code == 2
    assert "GPUATTR_PROMETHEUS_URL and --from-file cannot be used together" in err


def test_rivals_both_from_variables_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"GPUATTR_PROMETHEUS_URL": "http://prom:9090", "GPUATTR_FROM_FILE": "usage.csv"}
    code, err = _exit_code_and_stderr(capsys, _rivals(required=False), [], env)
    assert code == 2
    assert "GPUATTR_PROMETHEUS_URL and GPUATTR_FROM_FILE cannot be used together" in err


def test_a_flag_and_its_own_variable_are_no_rivals() -> None:
    args = parse_args(_rivals(), ["--from-file", "b.csv"], {"GPUATTR_FROM_FILE": "a.csv"})
    assert (args.from_file, args.prometheus_url) == ("b.csv", None)


def test_rivals_on_the_command_line_alone_are_still_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_code_and_stderr(capsys, _rivals(), ["--from-file", "a", "--prometheus-url", "u"], {})
    assert code == 2 and "not allowed with argument" in err


def test_a_parser_parses_again_without_the_previous_environment(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _rivals()
    assert parse_args(parser, [], {"GPUATTR_FROM_FILE": "a.csv"}).from_file == "a.csv"
    args = parse_args(parser, ["--prometheus-url", "u"], {})
    assert (args.from_file, args.prometheus_url) == (None, "u")
    code, err = _exit_code_and_stderr(capsys, parser, [], {})  # the group is required again
    assert code == 2 and "is required" in err


def test_help_shows_each_flags_variable_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per flag: no wrapping inside the tag
    parser = _parser()
    parse_args(parser, [], {})
    with pytest.raises(SystemExit) as info:
        parse_args(parser, ["--help"], {})
    assert info.value.code == 0
    out = capsys.readouterr().out
    for dest in ("PRICE_PER_GPU_HOUR", "DRY_RUN", "NAMESPACE", "PORTS", "MODE"):
        assert out.count(f"[env GPUATTR_{dest}]") == 1, out
    assert "what a GPU-hour costs (default: 1.0) [env GPUATTR_PRICE_PER_GPU_HOUR]" in out
    assert "GPUATTR_HELP" not in out
