"""Every flag of every subcommand explains itself in ``--help``: what it does, its default, its variable."""

from __future__ import annotations

import argparse
import re

import pytest

from common.envflags import env_name
from gpuattr import cli

SUBCOMMANDS = sorted(cli._subparsers(cli.build_parser()))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _help_of(out: str, flag: str) -> str:
    """The help text ``--help`` prints for one flag: from its line (two spaces in) to the next flag's, on one
    line; wrapped lines are indented further."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"  (-\w, )?{re.escape(flag)}(?=[ ,]|$)", line))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"  -", lines[i]) or not lines[i]), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def test_every_subcommand_is_walked() -> None:
    assert {"exporter", "demo", "docs", "alerts", "dashboards", *cli.PASSTHROUGH} <= set(SUBCOMMANDS)
    assert set(cli.PARSERS) == set(cli.PASSTHROUGH)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_has_help_its_default_and_its_variable(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # wrapped, as a terminal shows it
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    options = _options(cli.subcommand_parser(name))
    assert options, name
    for action in options:
        flag = action.option_strings[0]
        shown = _help_of(out, flag)
        own = re.sub(r"\s*\((default|one of|required)[^()]*\)|\s*\[env [^]]*\]", "", action.help or "")
        assert re.search(r"[a-z]{3,}", own), f"{name} {flag}: no help of its own: {action.help!r}"
        assert "".join(own.replace("%%", "%").split()) in "".join(shown.split()), f"{name} {flag}: {shown!r}"
        assert re.search(r"\([^()]*\b(default\b[^()]*|required)\)", shown), f"{name} {flag}: no default: {shown!r}"
        assert f"[env {env_name(action.dest)}]" in shown, f"{name} {flag}: {shown!r}"


@pytest.mark.parametrize(
    ("argv", "flag", "default"),
    [
        (["exporter"], "--interval", "5.0"),
        (["demo"], "--interval", "2.0"),  # the demo's own starting values, not the exporter's
        (["demo"], "--listen", "127.0.0.1:9835"),
        (["demo"], "--kubernetes", "on"),
        (["exporter"], "--kubernetes", "off"),
        (["attribute"], "--window", "7d"),
        (["review"], "--timeout", "120.0"),
        (["model-memory"], "--activation-peak", "1.5GiB"),
        (["dashboards"], "--out-dir", "dashboards/generated"),
    ],
)
def test_the_default_shown_is_the_one_used(
    argv: list[str], flag: str, default: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # wrapped, as a terminal shows it
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    assert f"(default: {default})" in _help_of(capsys.readouterr().out, flag)


def test_the_demo_uses_the_defaults_its_help_shows() -> None:
    parser = cli.subcommand_parser("demo")
    for name, value in cli.DEMO_DEFAULTS.items():
        action = next(a for a in parser._actions if a.dest == name)
        shown = "on" if value is True else str(value)
        assert f"(default: {shown})" in (action.help or ""), name


def test_version_prints_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gpuattr {version('gpu-attribution')}"
