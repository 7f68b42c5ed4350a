"""The worker threads under a deadline: a call that hangs holds up only its own key, and nobody waits on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest

from exporter.nvml.workers import CallHungError, Workers

DEADLINE_S = 0.2


@pytest.fixture
def workers() -> Iterator[Workers[str]]:
    pool: Workers[str] = Workers(lambda key: f"test-{key}")
    yield pool
    pool.shutdown()


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Holds a call inside ``blocked`` until set; set at the end so no thread stays parked."""
    event = threading.Event()
    yield event
    event.set()


def _soon() -> float:
    return time.monotonic() + DEADLINE_S


def _blocked(
    pool: Workers[str], gate: threading.Event, ran_on: list[threading.Thread] | None = None
) -> Callable[[], str]:
    def call() -> str:
        if ran_on is not None:
            ran_on.append(threading.current_thread())
        pool.entering("nvmlStuckCall")
        gate.wait(10)
        return "late"

    return call


def _until_returned(pool: Workers[str], key: str) -> None:
    deadline = time.monotonic() + 5
    while pool.hung_call(key) is not None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pool.hung_call(key) is None


def test_a_call_that_returns_in_time_gives_its_result_on_the_keys_own_thread(workers: Workers[str]) -> None:
    def call() -> tuple[str, int]:
        workers.entering("nvmlQuick")
        return threading.current_thread().name, sum(range(200_000))

    future = workers.submit("gpu0", call)
    assert workers.wait("gpu0", future, _soon()) == ("test-gpu0", sum(range(200_000)))
    assert workers.hung() == {} and workers.hung_call("gpu0") is None
    assert not workers.reclaim("gpu0")  # it never hung
    assert workers.cpu_seconds_total > 0


def test_what_the_call_raises_is_raised_to_the_waiter_and_the_key_stays_usable(workers: Workers[str]) -> None:
    def fail() -> int:
        raise ValueError("driver says no")

    with pytest.raises(ValueError, match="driver says no"):
        workers.wait("gpu0", workers.submit("gpu0", fail), _soon())
    assert workers.wait("gpu0", workers.submit("gpu0", lambda: 7), _soon()) == 7


def test_a_call_past_its_deadline_marks_the_key_hung_and_it_is_refused_until_the_call_returns(
    workers: Workers[str], gate: threading.Event
) -> None:
    future = workers.submit("gpu1", _blocked(workers, gate))
    t0 = time.monotonic()
    with pytest.raises(CallHungError) as timed_out:
        workers.wait("gpu1", future, _soon())
    assert DEADLINE_S <= time.monotonic() - t0 < DEADLINE_S + 1.0  # waited for the deadline, not the call
    assert (timed_out.value.key, timed_out.value.call, timed_out.value.first) == ("gpu1", "nvmlStuckCall", True)
    assert workers.hung() == {"gpu1": "nvmlStuckCall"}

    ran = threading.Event()
    with pytest.raises(CallHungError) as refused:
        workers.submit("gpu1", ran.set)
    assert refused.value.call == "nvmlStuckCall" and not refused.value.first  # the same hang, noticed again
    assert not workers.reclaim("gpu1")  # still inside the call

    gate.set()
    _until_returned(workers, "gpu1")
    assert future.result(timeout=1) == "late"
    assert not ran.is_set()  # the refused call was never run
    assert workers.reclaim("gpu1") and not workers.reclaim("gpu1")  # said once
    assert workers.wait("gpu1", workers.submit("gpu1", lambda: "again"), _soon()) == "again"


def test_other_keys_keep_working_while_one_is_hung(workers: Workers[str], gate: threading.Event) -> None:
    with pytest.raises(CallHungError):
        workers.wait("gpu1", workers.submit("gpu1", _blocked(workers, gate)), _soon())
    for _ in range(3):
        t0 = time.monotonic()
        results = [workers.wait(k, workers.submit(k, partial(str.upper, k)), _soon()) for k in ("gpu0", "node")]
        assert results == ["GPU0", "NODE"] and time.monotonic() - t0 < DEADLINE_S
    assert workers.hung() == {"gpu1": "nvmlStuckCall"}


def test_shutdown_does_not_wait_on_a_hung_call_and_its_thread_ends_once_the_call_returns(
    workers: Workers[str], gate: threading.Event
) -> None:
    threads: list[threading.Thread] = []

    def note_thread() -> int:
        threads.append(threading.current_thread())
        return len(threads)

    assert workers.wait("gpu0", workers.submit("gpu0", note_thread), _soon()) == 1
    with pytest.raises(CallHungError):
        workers.wait("gpu1", workers.submit("gpu1", _blocked(workers, gate, threads)), _soon())
    t0 = time.monotonic()
    assert workers.shutdown() == ["gpu1"]
    assert time.monotonic() - t0 < DEADLINE_S
    assert workers.hung() == {}
    idle, parked = threads
    idle.join(timeout=5)
    assert not idle.is_alive() and parked.is_alive()  # the idle thread ended; the parked one is still in its call
    gate.set()
    parked.join(timeout=5)
    assert not parked.is_alive()


def test_a_forgotten_key_gets_a_fresh_thread_while_the_old_one_stays_parked(
    workers: Workers[str], gate: threading.Event
) -> None:
    with pytest.raises(CallHungError):
        workers.wait("gpu1", workers.submit("gpu1", _blocked(workers, gate)), _soon())
    workers.forget("gpu1")
    assert workers.hung() == {}
    assert workers.wait("gpu1", workers.submit("gpu1", lambda: "fresh"), _soon()) == "fresh"
    assert not workers.reclaim("gpu1")  # the fresh thread never hung
