"""Advance several engines' forward generators by one op each, concurrently.

A session steps its sides (A, B and optionally R) in lockstep: every side computes the same op.
The exact kernels are numba functions compiled `nogil`, so the sides' ops can run at the same time
on separate cores; `advance_all` does that with a small pool of worker threads shared by the
process. Results do not depend on it: each generator runs alone on its own engine and model
(a generator is only ever resumed by one thread at a time), and no kernel's bits depend on which
thread runs it.

Concurrency is on when the machine has more than one core; `QDBG_LOCKSTEP_THREADS=1` (or
`set_threads(1)`) runs the sides one after the other in the calling thread.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Mapping, TypeVar

__all__ = ["advance_all", "set_threads", "threads"]

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
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
    global _threads, _pool
    if n is not None and n < 1:
        raise ValueError(f"lockstep threads must be >= 1, got {n}")
    with _lock:
        _threads = n
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def _get_pool(n_workers: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < n_workers:  # noqa: SLF001 (grow only)
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="qdbg-lockstep")
        return _pool


def submit_alongside(n_sides: int, fn: Any, *args: Any, **kw: Any) -> Future:
    """Run `fn(*args, **kw)` in a worker thread while `advance_all` steps `n_sides` generators: the
    pool is grown so that every side still gets a worker of its own (the extra job takes one)."""
    return _get_pool(max(1, n_sides)).submit(fn, *args, **kw)


def _next(g: Iterator[T]) -> T | None:
    return next(g, None)


def advance_all(gens: Mapping[str, Iterator[T]], concurrent: bool = True) -> dict[str, T | None]:
    """`{label: next(gen, None)}` for every generator, computed concurrently where cores allow.

    `concurrent=False` steps them in order in the calling thread (for ops too small to gain:
    on a SmolLM2-sized pair the hand-off costs more than the 1-3 ms ops take; from TinyLlama's
    size a pass runs ~1.5x faster on two cores; or when one side reads another's result).

    The first generator runs in the calling thread, the others in worker threads; the call
    returns when all are done. An exception raised by any generator is re-raised here (the
    first one, in the order of `gens`), after every side has finished its op.
    """
    items = list(gens.items())
    n = min(len(items), threads()) if concurrent else 1
    if n <= 1:
        return {lab: _next(g) for lab, g in items}
    pool = _get_pool(n - 1)
    futures: list[tuple[str, Future]] = [(lab, pool.submit(_next, g)) for lab, g in items[1:]]
    out: dict[str, T | None] = {}
    first_err: BaseException | None = None
    try:
        out[items[0][0]] = _next(items[0][1])
    except BaseException as e:  # noqa: BLE001 (re-raised below, after the workers finish)
        first_err = e
    for lab, fut in futures:
        try:
            out[lab] = fut.result()
        except BaseException as e:  # noqa: BLE001
            if first_err is None:
                first_err = e
    if first_err is not None:
        raise first_err
    return {lab: out[lab] for lab, _ in items}
