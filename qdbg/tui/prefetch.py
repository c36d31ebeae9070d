"""PrefetchSource: computes the next ops in a background thread while the user reads, so that `s`
shows an op that is already there, and a wait for a slow op can be interrupted.

The hook is the debugger's public `source` attribute (an OpSource, qdbg.source): `install(session,
interrupt)` puts a PrefetchSource in front of the session's own source, and `uninstall(session)`
takes it out again. Only the prefetch thread ever calls the inner source's `next_op`; the debugger's
`next_op` takes the next op from a bounded buffer (at most `max_ops` ops and `max_bytes` of values,
always at least one), waiting for it when it is still being computed. While it waits it polls the
`interrupt` Event (the TUI's Esc), and raises `Interrupted` when it is set: the op being computed
is not lost, it lands in the buffer and the next step takes it.

The thread stays within the pass under way: after a pass's last op it computes the first op of
the next one only when the debugger asks for it (a decode pass takes a token from the queue, which
the header shows). `reset` and `decode` wait for the op in flight, then change the inner source.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Sequence

from qdbg.errors import QdbgError

MAX_OPS = 24
"""Ops computed ahead: more than a layer of any supported architecture."""
MAX_BYTES = 256 << 20
"""Bytes of values held ahead (a long prompt's activations are large: fewer ops then)."""
POLL = 0.02
"""Seconds between checks of the interrupt Event while the debugger waits for an op."""


class Interrupted(QdbgError):
    """The user interrupted a wait for an op still being computed (it stays queued)."""


def _nbytes(rec: Any) -> int:
    return sum(int(getattr(v, "nbytes", 0)) for v in rec.values.values())


class PrefetchSource:
    """An OpSource that computes ahead of its debugger; see the module docstring."""

    def __init__(self, inner: Any, interrupt: threading.Event | None = None, *, max_ops: int = MAX_OPS,
                 max_bytes: int = MAX_BYTES, at_pass_end: bool = False) -> None:
        self.inner = inner
        self.interrupt = interrupt or threading.Event()
        self.max_ops, self.max_bytes = max(1, max_ops), max_bytes
        self._cond = threading.Condition()
        self._buf: deque[Any] = deque()
        self._bytes = 0
        self._next = 0            # index of the next op the thread computes
        self._pass_pos = 0        # its position within its pass (for the catalogue)
        self._at_pass_end = at_pass_end   # True when the inner source has just ended a pass
        self._wanted = False      # the debugger is waiting for an op
        self._done = False
        self._error: BaseException | None = None
        self._computing: tuple[str, float] | None = None   # (what, monotonic start)
        self._generation = 0      # bumped by reset: results of an older generation are dropped
        self._closed = False
        self.computed = 0
        """Ops the inner source has computed through this wrapper (tests check none is computed twice)."""
        self._thread = threading.Thread(target=self._loop, name="qdbg-prefetch", daemon=True)
        self._thread.start()

    # -- the OpSource surface -------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:   # models, labels, tokens, pending, catalogue, ...
        return getattr(self.inner, name)

    def next_op(self, index: int) -> Any:
        """The next op (from the buffer, or waited for); None at the end; Interrupted on Esc."""
        with self._cond:
            self._wanted = True
            self._cond.notify_all()
            try:
                while not self._buf:
                    if self._error is not None:
                        err, self._error = self._error, None
                        raise err
                    if self._done:
                        return None
                    if self._closed and self._computing is None:   # no thread: compute here
                        return self.inner.next_op(index)
                    if self.interrupt.is_set():
                        raise Interrupted(f"interrupted while computing {self._what()}")
                    self._cond.wait(POLL)
            finally:
                self._wanted = False
            rec = self._buf.popleft()
            self._bytes -= _nbytes(rec)
            self._cond.notify_all()
        rec.index = index
        return rec

    @property
    def exhausted(self) -> bool:
        with self._cond:
            if self._buf or self._computing is not None:
                return False
            return self._done or self.inner.exhausted

    def reset(self) -> None:
        with self._cond:
            self._quiesce()
            self._generation += 1
            self.inner.reset()
            self._buf.clear()
            self._bytes = self._next = self._pass_pos = 0
            self._at_pass_end = self._done = False
            self._error = None
            self._cond.notify_all()

    def decode(self, n: int, driver: str = "a", text_tokens: Sequence[int] | None = None) -> None:
        with self._cond:
            self._quiesce()
            self.inner.decode(n, driver, text_tokens)
            self._done = False
            self._cond.notify_all()

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> tuple[str, float] | None:
        """(what is being computed, seconds since it started), or None when the thread is idle."""
        with self._cond:
            if self._computing is None:
                return None
            what, t0 = self._computing
            return what, time.monotonic() - t0

    def buffered(self) -> int:
        """Ops computed ahead and not yet handed out."""
        with self._cond:
            return len(self._buf)

    def wake(self) -> None:
        """Wake a debugger waiting in `next_op` now (after setting `interrupt`), not at its next poll."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the thread (after the op in flight) and return the inner source."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # -- the thread ---------------------------------------------------------------------------------
    def _quiesce(self) -> None:
        """Wait (holding the condition's lock between waits) until no op is in flight."""
        while self._computing is not None:
            self._cond.wait()

    def _should_compute(self) -> bool:
        if self._closed or self._done or self._error is not None:
            return False
        if not self._buf and self._wanted:
            return True
        return (not self._at_pass_end and len(self._buf) < self.max_ops and self._bytes < self.max_bytes)

    def _what(self) -> str:
        """'ffn_up-7 (Q4_K 5632×2048)': the op the thread computes next, from the catalogue."""
        cat = getattr(self.inner, "catalogue", None)
        ops = getattr(cat, "ops", None) or []
        if not 0 <= self._pass_pos < len(ops):
            return "the next op"
        op = ops[self._pass_pos]
        try:
            t = self.inner.models["A"].tensors[op.weight] if op.weight else None
        except (KeyError, AttributeError, TypeError):
            t = None
        if t is None:
            return op.name
        types = []
        for m in self.inner.models.values():
            q = m.tensors[op.weight].qtype
            types.append(getattr(q, "name", str(q)))
        shape = "×".join(str(d) for d in t.shape)
        return f"{op.name} ({'/'.join(dict.fromkeys(types))} {shape})"

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._should_compute():
                    if self._closed:
                        return
                    self._cond.wait()
                gen, index = self._generation, self._next
                self._computing = (self._what(), time.monotonic())
            rec, err = None, None
            try:
                rec = self.inner.next_op(index)
            except BaseException as e:  # noqa: BLE001 (handed to the debugger's next_op)
                err = e
            with self._cond:
                self._computing = None
                if gen == self._generation:
                    self.computed += 1
                    if err is not None:
                        self._error = err
                    elif rec is None:
                        self._done = True
                    else:
                        self._buf.append(rec)
                        self._bytes += _nbytes(rec)
                        self._next += 1
                        self._pass_pos += 1
                        self._at_pass_end = False
                        if rec.name == "result_output":
                            self._pass_pos = 0
                            # more prompt micro-batches follow without taking a queued token
                            more_prompt = bool(rec.positions) and rec.positions[-1] + 1 < len(self.inner.tokens)
                            self._at_pass_end = not more_prompt
                self._cond.notify_all()


def install(session: Any, interrupt: threading.Event | None = None, **kw: Any) -> PrefetchSource | None:
    """Put a PrefetchSource in front of a live session's source (a recorded one needs none)."""
    src = session.source
    if isinstance(src, PrefetchSource):
        return src
    if not hasattr(src, "engines"):
        return None
    h = session.history
    kw.setdefault("at_pass_end", bool(h) and h[-1].name == "result_output")
    session.source = PrefetchSource(src, interrupt, **kw)
    return session.source


def uninstall(session: Any) -> None:
    """Stop the prefetch thread and give the session its own source back. Ops computed ahead are
    not lost: while some are buffered the (closed) wrapper stays and hands them out first, then
    computes in the caller's thread."""
    src = getattr(session, "source", None)
    if isinstance(src, PrefetchSource):
        src.close()
        if not src.buffered():
            session.source = src.inner
