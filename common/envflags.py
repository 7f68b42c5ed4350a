"""Every command-line flag is also an environment variable: ``--price-per-gpu-hour`` is ``GPUATTR_PRICE_PER_GPU_HOUR``.

A flag given on the command line wins over the variable; the variable wins over the flag's default. A
variable that does not convert is refused like a bad flag, naming the variable. Help texts show each
flag's default and its variable: ``what a GPU-hour costs (default: 2.5) [env GPUATTR_PRICE_PER_GPU_HOUR]``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from common.quoting import short_repr

ENV_PREFIX = "GPUATTR_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SKIP = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def env_name(dest: str) -> str:
    """The environment variable of a flag's destination: ``price_per_gpu_hour`` → ``GPUATTR_PRICE_PER_GPU_HOUR``."""
    return ENV_PREFIX + dest.upper()


def parse_bool(text: str, where: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{where}: expected true or false, got {short_repr(text)}")


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, _SKIP) and a.dest != "help"]


def _required_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str | None:
    """``required``, or ``one of --a, --b required`` for a member of a required group; None if optional."""
    if action.required:
        return "required"
    for group in parser._mutually_exclusive_groups:
        if group.required and action in group._group_actions:
            return "one of " + ", ".join(a.option_strings[0] for a in group._group_actions) + " required"
    return None


def default_text(value: Any) -> str:
    """How a help text shows a default: ``on``/``off`` for a switch, ``none`` for nothing, lists comma-joined."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value in ("", []):
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def with_default(help_text: str, default: str | None, env: str) -> str:
    """``help (default: X) [env GPUATTR_…]``; a help that already says its default (``(default: now)``,
    ``(required)``) keeps its own words. Idempotent."""
    text = help_text.strip()
    said = re.search(r"\([^()]*\b(default|required)\b[^()]*\)", text) is not None
    if default is not None and not said:
        text = f"{text} (default: {default.replace('%', '%%')})"
    tag = f"[env {env}]"
    return text if tag in text else f"{text} {tag}"


def annotate(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``(default: X)`` (or ``(required)``) and ``[env GPUATTR_…]`` to each option's help (once)."""
    for action in _options(parser):
        if action.help is argparse.SUPPRESS:
            continue
        required = _required_text(parser, action)
        if required is not None:
            shown = required
            help_text = action.help or ""
            if not re.search(r"\brequired\b", help_text):
                help_text = f"{help_text} ({shown})"
            action.help = with_default(help_text, None, env_name(action.dest))
            continue
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            shown = default_text(bool(action.default))
        else:
            shown = default_text(action.default)
        action.help = with_default(action.help or "", shown, env_name(action.dest))
    return parser


def _convert(action: argparse.Action, raw: str, where: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        value = parse_bool(raw, where)
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse.BooleanOptionalAction):
        return parse_bool(raw, where)
    if isinstance(action, argparse._StoreConstAction | argparse._CountAction):
        raise ValueError(f"{where}: this flag takes no value and cannot be set from the environment")

    def one(text: str) -> Any:
        value: Any = text
        if callable(action.type):
            try:
                value = action.type(text)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise ValueError(f"{where}: {short_repr(text)} is not valid: {exc}") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise ValueError(f"{where}: {short_repr(text)} is not one of {choices}")
        return value

    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        return [one(part.strip()) for part in raw.split(",") if part.strip()]
    return one(raw)


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with ``GPUATTR_*`` variables standing in for flags not given.

    The parser is left as it was found (defaults and required flags), so it can parse again with
    another environment.
    """
    environ = os.environ if environ is None else environ
    annotate(parser)
    options = _options(parser)
    from_env: dict[str, Any] = {}
    for action in options:
        name = env_name(action.dest)
        if name not in environ:
            continue
        try:
            from_env[action.dest] = _convert(action, environ[name], name)
        except ValueError as exc:
            parser.error(str(exc))
    # set_defaults overwrites each action's default: keep the declared ones to tell what was given
    declared = {id(a): (a.default, a.required) for a in parser._actions}
    saved_defaults = dict(parser._defaults)
    saved_groups = [(group, group.required) for group in parser._mutually_exclusive_groups]
    try:
        for action in options:
            if action.dest in from_env:
                action.required = False
        for group in parser._mutually_exclusive_groups:
            if any(a.dest in from_env for a in group._group_actions):
                group.required = False
        parser.set_defaults(**from_env)
        args = parser.parse_args(None if argv is None else list(argv))
        for group in parser._mutually_exclusive_groups:  # rivals from the env, or one from the env and the CLI
            given = [a for a in group._group_actions if getattr(args, a.dest, None) != declared[id(a)][0]]
            if len(given) > 1 and any(a.dest in from_env for a in given):
                names = " and ".join(env_name(a.dest) if a.dest in from_env else a.option_strings[0] for a in given)
                parser.error(f"{names} cannot be used together")
    finally:
        for action in parser._actions:
            action.default, action.required = declared[id(action)]
        parser._defaults.clear()
        parser._defaults.update(saved_defaults)
        for group, required in saved_groups:
            group.required = required
    return args


class Parser(argparse.ArgumentParser):
    """A parser whose complaint about a ``GPUATTR_*`` variable is one line naming it: the variable is not on
    the command line, so the usage would not point at it. Other mistakes get argparse's usage as ever."""

    def error(self, message: str) -> NoReturn:
        if ENV_PREFIX in message:
            self.exit(2, f"{self.prog}: {message}\n")
        super().error(message)
