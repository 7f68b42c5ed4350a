"""Every flag is also an environment variable; bad values name both."""

from __future__ import annotations

import dataclasses

import pytest

from common.envflags import env_name
from exporter.settings import ExporterSettings, SettingsError, parse


def test_environment_variables_set_what_flags_do_and_flags_win() -> None:
    env = {"GPUATTR_INTERVAL": "2.5", "GPUATTR_DCGM_COMPAT": "true", "GPUATTR_LISTEN": "127.0.0.1:1"}
    s = parse(ExporterSettings, [], env)
    assert (s.interval, s.dcgm_compat, s.listen) == (2.5, True, "127.0.0.1:1")
    s = parse(ExporterSettings, ["--interval", "7", "--no-dcgm-compat"], env)
    assert (s.interval, s.dcgm_compat) == (7.0, False)


def test_every_field_has_help_and_an_environment_variable() -> None:
    for f in dataclasses.fields(ExporterSettings):
        assert f.metadata.get("help"), f.name
        assert env_name(f.name) == "GPUATTR_" + f.name.upper()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GPUATTR_INTERVAL": "soon"}, "GPUATTR_INTERVAL: expected a number"),
        ({"GPUATTR_DCGM_COMPAT": "maybe"}, "GPUATTR_DCGM_COMPAT: expected true or false"),
    ],
)
def test_a_bad_environment_value_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse(ExporterSettings, [], env)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "0"], "--interval / GPUATTR_INTERVAL"),
        (["--listen", "localhost"], "--listen / GPUATTR_LISTEN: expected HOST:PORT"),
        (["--tls-cert", "a.pem"], "--tls-cert and --tls-key go together"),
        (["--log-level", "loud"], "unknown level"),
        (["--max-open-connections", "0"], "--max-open-connections / GPUATTR_MAX_OPEN_CONNECTIONS: must be at least 1"),
        (["--max-client-connections", "0"], "--max-client-connections / GPUATTR_MAX_CLIENT_CONNECTIONS"),
        (["--max-client-request-rate", "0.5"], "--max-client-request-rate / GPUATTR_MAX_CLIENT_REQUEST_RATE"),
        (["--request-timeout", "0"], "--request-timeout / GPUATTR_REQUEST_TIMEOUT: must be positive"),
        (["--request-timeout", "nan"], "--request-timeout / GPUATTR_REQUEST_TIMEOUT"),
    ],
)
def test_invalid_settings_are_refused_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse(ExporterSettings, argv, {}).validate()
