"""Restart policy (backoff and restart window), tested without Trio."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capsync.runtime.backoff import Backoff, RestartWindow


def test_delay_starts_at_initial_grows_by_factor_and_stops_at_cap():
    backoff = Backoff(initial=0.5, factor=3.0, cap=10.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(5)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_jitter_stays_within_fraction_of_base_and_varies():
    backoff = Backoff(initial=2.0, factor=2.0, cap=100.0, jitter=0.25)
    rng = random.Random(7)
    delays = [backoff.delay(1, rng) for _ in range(200)]
    assert all(3.0 <= d <= 5.0 for d in delays)
    assert min(delays) < 3.5 and max(delays) > 4.5  # both directions, not a constant


def test_jitter_is_reproducible_with_a_seeded_rng():
    backoff = Backoff()
    assert backoff.delay(3, random.Random(1)) == backoff.delay(3, random.Random(1))


def test_huge_attempt_is_capped_instead_of_overflowing():
    assert Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.0).delay(10_000) == 30.0
    assert Backoff(initial=0.0, jitter=0.0).delay(10_000) == 0.0


def test_negative_attempt_is_rejected():
    with pytest.raises(ValueError):
        Backoff().delay(-1)


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": -1.0}, {"cap": -1.0}, {"factor": 0.5}, {"jitter": -0.1}, {"jitter": 1.5}],
)
def test_invalid_backoff_is_rejected(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


backoffs = st.builds(
    Backoff,
    initial=st.floats(0, 100),
    factor=st.floats(1, 10),
    cap=st.floats(0, 1000),
    jitter=st.floats(0, 1),
)


@given(backoffs, st.integers(0, 2000), st.integers(0, 2**32))
def test_delay_is_between_zero_and_jittered_cap(backoff, attempt, seed):
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= backoff.cap * (1 + backoff.jitter)


@given(backoffs, st.integers(0, 2000))
def test_delay_without_jitter_never_decreases(backoff, attempt):
    backoff = Backoff(backoff.initial, backoff.factor, backoff.cap, jitter=0.0)
    assert backoff.delay(attempt) <= backoff.delay(attempt + 1)


def test_window_allows_max_restarts_then_gives_up():
    window = RestartWindow(max_restarts=3, period=10.0)
    assert [window.record(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert window.record(3.0) is False


def test_window_forgets_restarts_older_than_period():
    window = RestartWindow(max_restarts=2, period=10.0)
    assert all(window.record(t) for t in (0.0, 6.0, 12.0, 18.0, 24.0))  # never 3 within 10 s
    assert window.record(25.0) is False  # 18, 24 and 25 are within 10 s


def test_restart_exactly_period_ago_no_longer_counts():
    window = RestartWindow(max_restarts=1, period=10.0)
    assert window.record(0.0)
    assert window.record(10.0)
    assert window.record(15.0) is False


def test_zero_max_restarts_gives_up_at_once():
    assert RestartWindow(max_restarts=0, period=1.0).record(0.0) is False


@pytest.mark.parametrize("max_restarts, period", [(-1, 1.0), (1, 0.0)])
def test_invalid_window_is_rejected(max_restarts, period):
    with pytest.raises(ValueError):
        RestartWindow(max_restarts, period)


@given(
    st.integers(0, 5),
    st.floats(0.1, 20),
    st.lists(st.floats(0, 5), max_size=40),
)
def test_window_matches_counting_every_restart(max_restarts, period, gaps):
    window = RestartWindow(max_restarts, period)
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        times.append(now)
        in_window = sum(1 for t in times if now - t < period)
        assert window.record(now) is (in_window <= max_restarts)
