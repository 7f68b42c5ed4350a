"""Blocking calls run on worker threads, one thread per key, waited for under a deadline.

A C call cannot be interrupted, so a call that outlives its deadline is not waited for again: the caller
gets ``CallHungError`` naming the call, the thread stays parked in it and its key is *hung*. Nothing more is sent
to a hung key (``submit`` refuses it with ``CallHungError``) until the call returns; then ``reclaim`` says the key
had hung and serves it again. The other keys are not held up. ``shutdown`` never waits on a parked thread:
it ends on its own once its call returns.

The code running on a worker thread names the call it is about to be inside with ``entering``, so a call
that hangs can be named.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

_Job = tuple[Callable[[], Any], "Future[Any]"]


class CallHungError(Exception):
    """The call a key's thread is inside did not return in time, or has still not returned.

    ``first`` is true only the first time this hang is noticed (until ``reclaim`` serves the key again),
    so a caller counts and logs each hang once.
    """

    def __init__(self, key: Hashable, call: str, first: bool) -> None:
        super().__init__(f"{call} on {key!r} has not returned")
        self.key = key
        self.call = call
        self.first = first


class _Thread:
    """One daemon thread that runs the jobs handed to it, one at a time."""

    def __init__(self, name: str, local: threading.local, on_cpu: Callable[[float], None]) -> None:
        self.current_call = ""
        self.pending: Future[Any] | None = None
        self.marked = False  # found hung, not reclaimed since
        self._on_cpu = on_cpu
        self._local = local
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A job was handed over and has not finished (it may be stuck in a C call)."""
        return self.pending is not None and not self.pending.done()

    @property
    def stuck_in(self) -> str | None:
        """The call a busy thread is inside; None when it is idle."""
        return (self.current_call or "unknown") if self.busy else None

    def mark_hung(self, key: Hashable) -> CallHungError:
        first = not self.marked
        self.marked = True
        return CallHungError(key, self.stuck_in or "unknown", first)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self.pending = future
        self._jobs.put((fn, future))
        return future

    def stop(self) -> None:
        """Ends the thread once its current job, if any, returns."""
        self._jobs.put(None)

    def _run(self) -> None:
        self._local.thread = self
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            cpu0 = time.thread_time()
            try:
                result = fn()
            except BaseException as exc:  # handed to the waiting thread, which decides
                self._finish(cpu0)
                future.set_exception(exc)
            else:
                self._finish(cpu0)
                future.set_result(result)

    def _finish(self, cpu0: float) -> None:
        self.current_call = ""
        self._on_cpu(time.thread_time() - cpu0)


class Workers(Generic[K]):
    """A thread per key, started on the first submit for that key; see the module docstring."""

    def __init__(self, thread_name: Callable[[K], str]) -> None:
        self._thread_name = thread_name
        self._threads: dict[K, _Thread] = {}
        self._local = threading.local()
        self._cpu_lock = threading.Lock()
        self._cpu_seconds = 0.0

    @property
    def cpu_seconds_total(self) -> float:
        """CPU time the worker threads spent in the jobs they ran."""
        with self._cpu_lock:
            return self._cpu_seconds

    def entering(self, call: str) -> None:
        """Note the call this worker thread is about to be inside; does nothing on other threads."""
        thread: _Thread | None = getattr(self._local, "thread", None)
        if thread is not None:
            thread.current_call = call

    def submit(self, key: K, fn: Callable[[], T]) -> Future[T]:
        """Runs ``fn`` on the key's thread; ``CallHungError`` when its previous call has not returned."""
        thread = self._threads.get(key)
        if thread is None:
            thread = self._threads[key] = _Thread(self._thread_name(key), self._local, self._add_cpu)
        elif thread.busy:
            raise thread.mark_hung(key)
        return thread.submit(fn)

    def wait(self, key: K, future: Future[T], deadline: float) -> T:
        """The result of a call submitted for ``key``, waiting until ``deadline`` (``time.monotonic()``).

        Whatever the call raised is raised here; a call still running at the deadline marks the key hung
        and raises ``CallHungError``.
        """
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FuturesTimeout:
            thread = self._threads.get(key)
            raise (thread.mark_hung(key) if thread is not None else CallHungError(key, "unknown", True)) from None

    def hung_call(self, key: K) -> str | None:
        """The call the key's thread is inside while its last call has not returned; None when idle."""
        thread = self._threads.get(key)
        return thread.stuck_in if thread is not None else None

    def hung(self) -> dict[K, str]:
        """Every key whose last call has not returned, with the call its thread is inside."""
        return {key: call for key, thread in self._threads.items() if (call := thread.stuck_in) is not None}

    def reclaim(self, key: K) -> bool:
        """True once when a key found hung has returned from its call; it is then served as usual."""
        thread = self._threads.get(key)
        if thread is None or not thread.marked or thread.busy:
            return False
        thread.marked = False
        return True

    def forget(self, key: K) -> None:
        """Drops the key's thread without waiting (a parked one ends once its call returns)."""
        thread = self._threads.pop(key, None)
        if thread is not None:
            thread.stop()

    def shutdown(self) -> list[K]:
        """Stops every thread without waiting on any; returns the keys whose call has not returned."""
        parked = [key for key, thread in self._threads.items() if thread.busy]
        for thread in self._threads.values():
            thread.stop()
        self._threads.clear()
        return parked

    def _add_cpu(self, seconds: float) -> None:
        with self._cpu_lock:
            self._cpu_seconds += seconds
