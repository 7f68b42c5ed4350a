"""Scenario signals: values, exact interval means, and clear errors for what cannot be read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.units import parse_size
from simulator.signals import Burst, Constant, Points, signal_from_spec


def test_sizes_accept_binary_and_decimal_units() -> None:
    assert parse_size("40GiB") == 40 * 2**30
    assert parse_size("512 MiB") == 512 * 2**20
    assert parse_size("1.5GB") == 1.5e9
    assert parse_size(1024) == 1024


@pytest.mark.parametrize("bad", ["40 gigs", "-1GiB", "", "GiB"])
def test_a_malformed_size_is_refused_with_the_value_named(bad: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_a_ramp_holds_its_ends_and_its_mean_is_exact() -> None:
    ramp = signal_from_spec({"ramp": {"from": 0, "to": 10, "start": 10, "end": 20}})
    assert (ramp.value(0), ramp.value(15), ramp.value(99)) == (0, 5, 10)
    assert ramp.mean(10, 20) == pytest.approx(5)
    assert ramp.mean(0, 20) == pytest.approx(2.5)
    assert ramp.mean(20, 30) == pytest.approx(10)


def test_a_burst_mean_over_whole_periods_is_its_duty_weighted_level() -> None:
    burst = Burst(period=10, duty=0.3, high=1.0, low=0.1)
    assert burst.mean(0, 100) == pytest.approx(0.3 + 0.7 * 0.1)
    assert burst.mean(0, 3) == pytest.approx(1.0)
    assert burst.mean(3, 10) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"points": []}, "at least one"),
        ({"points": [[5, 1], [1, 2]]}, "time order"),
        ({"burst": {"period": 0, "duty": 0.5, "high": 1}}, "period"),
        ({"burst": {"period": 1, "duty": 2, "high": 1}}, "duty"),
        ({"wiggle": 1}, "cannot read"),
        ({"ramp": {"to": 1, "end": 2, "slope": 3}}, "unknown ramp keys"),
    ],
)
def test_malformed_signals_are_refused_with_a_reason(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        signal_from_spec(spec)


levels = st.floats(min_value=0, max_value=1, allow_nan=False)
times = st.floats(min_value=0, max_value=1000, allow_nan=False)


@given(st.lists(st.tuples(times, levels), min_size=1, max_size=8), times, times)
def test_the_mean_of_points_lies_between_their_extremes(points: list[tuple[float, float]], a: float, b: float) -> None:
    sig = Points.of(sorted(points))
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    assert lo - 1e-9 <= sig.mean(min(a, b), max(a, b)) <= hi + 1e-9


@given(
    st.floats(min_value=0.1, max_value=100), levels, levels, levels, times, st.floats(min_value=0.001, max_value=500)
)
def test_the_mean_of_a_burst_lies_between_low_and_high(
    period: float, duty: float, high: float, low: float, t0: float, span: float
) -> None:
    sig = Burst(period=period, duty=duty, high=high, low=low)
    m = sig.mean(t0, t0 + span)
    assert min(low, high) - 1e-9 <= m <= max(low, high) + 1e-9


def test_a_step_made_of_two_points_at_one_time_integrates_from_the_new_level() -> None:
    step = Points.of([(0, 0), (0, 1), (2, 0)])  # jumps to 1 at t=0, then ramps down to 0 at t=2
    assert step.mean(1, 2) == pytest.approx(0.25)
    assert step.mean(0, 2) == pytest.approx(0.5)


def test_a_constant_is_its_own_mean() -> None:
    assert Constant(0.4).mean(3, 9) == 0.4
