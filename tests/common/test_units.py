"""common.units: byte sizes (binary and decimal), Prometheus durations, and how both are written."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.units import GiB, KiB, MiB, TiB, format_duration, gib, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("40GiB", 40 * 2**30),
        ("512 MiB", 512 * 2**20),
        ("  3 KiB ", 3 * 2**10),
        ("2TiB", 2 * 2**40),
        ("1.5GB", 1.5e9),
        ("7kB", 7_000),
        ("12MB", 12_000_000),
        ("1TB", 1e12),
        ("40gib", 40 * 2**30),  # units are case-insensitive
        ("123B", 123),
        ("4096", 4096),  # a plain number is bytes
        ("0.5", 0.5),
    ],
)
def test_sizes_read_binary_units_as_powers_of_two_and_decimal_ones_as_powers_of_ten(text: str, size: float) -> None:
    assert parse_size(text) == size


def test_a_binary_and_a_decimal_unit_of_the_same_letter_differ() -> None:
    assert parse_size("1GiB") == GiB == 2**30
    assert parse_size("1GB") == 10**9
    assert parse_size("1KiB") - parse_size("1KB") == KiB - 1000
    assert (MiB, TiB) == (2**20, 2**40)


def test_numbers_are_bytes_as_they_are() -> None:
    assert parse_size(1024) == 1024.0
    assert parse_size(2.5) == 2.5
    assert parse_size(0) == 0.0


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, math.inf, -math.inf, 10**400])
def test_negative_and_non_finite_numbers_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"negative|not a finite number"):
        parse_size(bad)


@pytest.mark.parametrize("bad", [True, False])
def test_a_bool_is_not_a_size(bad: bool) -> None:
    with pytest.raises(ValueError, match=f"not a size: {bad}"):
        parse_size(bad)


@pytest.mark.parametrize("bad", ["", "GiB", "-1GiB", "40 GiBs", "1e9", "40G", "forty GiB", "nan", "9" * 400])
def test_text_that_is_no_size_is_refused_quoting_it(bad: str) -> None:
    with pytest.raises(ValueError, match=r"not a size|not a finite number") as info:
        parse_size(bad)
    assert repr(bad)[:20] in str(info.value)  # quoted, and cut when long


@pytest.mark.parametrize("bad", [None, [1], {"a": 1}])
def test_values_of_another_type_are_refused_as_value_errors(bad: object) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(bad)  # type: ignore[arg-type]  # a YAML file can hold anything


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * 86400),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1y", 365 * 86400),
        ("2w", 14 * 86400),
        ("90s", 90),
        ("1d2h3m4s5ms", 86400 + 2 * 3600 + 3 * 60 + 4 + 0.005),
        ("0s", 0),
    ],
)
def test_prometheus_durations_are_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("bad", ["1h1h", "30m1h", "", "7 d", "abc", "1.5h", "-1h", "1H", " 1h", "1h ", "h", "5"])
def test_a_duration_prometheus_would_refuse_is_refused_naming_what_it_is(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^--lookback: expected a Prometheus duration") as info:
        parse_duration(bad, "--lookback")
    assert repr(bad) in str(info.value)


def test_a_duration_error_names_duration_by_default_and_refuses_a_non_string() -> None:
    with pytest.raises(ValueError, match=r"^duration: "):
        parse_duration("soon")
    with pytest.raises(ValueError, match=r"^window: "):
        parse_duration(None, "window")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"), [(1, "1s"), (90, "1m30s"), (3600, "1h"), (86400 + 1, "1d1s"), (7 * 86400, "1w")]
)
def test_durations_are_written_in_the_fewest_units(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert format_duration(float(seconds)) == text


@given(st.integers(min_value=1, max_value=10**10))
def test_every_whole_number_of_seconds_round_trips_through_its_written_form(seconds: int) -> None:
    written = format_duration(seconds)
    assert parse_duration(written) == seconds
    assert format_duration(parse_duration(written)) == written


@pytest.mark.parametrize("bad", [0, -5, 1.5, math.nan, math.inf, True])
def test_only_positive_whole_seconds_can_be_written(bad: float) -> None:
    with pytest.raises(ValueError, match="not a positive whole number of seconds"):
        format_duration(bad)


def test_gib_writes_bytes_in_gib_and_dash_when_unknown() -> None:
    assert gib(7.45 * GiB) == "7.45 GiB"
    assert gib(1536 * MiB) == "1.50 GiB"
    assert gib(0) == "0.00 GiB"
    assert gib(80 * GiB, digits=0) == "80 GiB"
    assert gib(GiB / 3, digits=3) == "0.333 GiB"
    assert gib(None) == "-"
    assert gib(math.nan) == "-"
