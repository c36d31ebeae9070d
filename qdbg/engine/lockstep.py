"""Run several engines' forward generators at the same time, each in a thread of its own.

A session steps its sides (A, B and optionally R) in lockstep: every side computes the same ops.
The exact kernels are numba functions compiled `nogil`, so the sides can compute at the same time
on separate cores: a `Runner` runs one side's pass free in its own thread, a bounded number of ops
ahead, and the session takes one result from each side in turn. (An earlier design handed every
op to a worker pool and waited for all sides at each op; on a 2-core machine the per-op hand-off
and the wait for the slower side cost a TinyLlama-shaped pass about a third of its time.)
Results do not depend on it: each generator runs alone on its own engine and model (a generator
is only ever resumed by its runner's thread), and no kernel's bits depend on which thread runs it.

Concurrency is on when the machine has more than one core; `QDBG_LOCKSTEP_THREADS=1` (or
`set_threads(1)`) makes sessions run the sides one after the other in the calling thread.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterator, TypeVar

__all__ = ["AHEAD", "Runner", "set_threads", "threads"]

T = TypeVar("T")

_threads: int | None = None


def threads() -> int:
    """How many sides may run at once: $QDBG_LOCKSTEP_THREADS, else the number of usable cores."""
    if _threads is not None:
        return _threads
    env = os.environ.get("QDBG_LOCKSTEP_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None) -> None:
    """Cap the concurrency (1: sequential); None returns to the default."""
    global _threads
    if n is not None and n < 1:
        raise ValueError(f"lockstep threads must be >= 1, got {n}")
    _threads = n


AHEAD = 32
"""Results a Runner computes ahead of its consumer (a layer and more of any supported architecture)."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class Runner:
    """Runs one generator in a thread of its own, up to `ahead` results ahead of `get()`.

    Each side of a session runs its pass without waiting for the other at every op (they still
    compute the same ops: the consumer takes one result from each in turn), so a side's slower
    ops and a worker's wake-up are not paid at every op. `on_result(r)` is called in the runner's
    thread as each result is made (before it is queued). An exception from the generator is raised
    by the `get()` that reaches it (and every later one). `close()` stops the thread at its next
    result (the op in flight finishes).
    """

    def __init__(self, gen: Iterator[T], name: str, on_result: Any = None, ahead: int = AHEAD) -> None:
        self._q: Any = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._on_result = on_result
        self._thread = threading.Thread(target=self._run, args=(gen,), name=f"qdbg-side-{name}", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, gen: Iterator[T]) -> None:
        try:
            for r in gen:
                if self._on_result is not None:
                    self._on_result(r)
                if not self._put(r):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 (raised by the consumer's get)
            self._put(_Failed(e))

    def get(self) -> T | None:
        """The next result (waiting for it), None after the last."""
        item = self._q.get()
        if isinstance(item, _Failed):
            self._put(item)    # every later get raises it too
            raise item.error
        if item is _END:
            self._put(_END)
            return None
        return item

    def close(self) -> None:
        self._stop.set()
