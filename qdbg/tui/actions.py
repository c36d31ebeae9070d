"""What the app's actions do to a session, kept free of widgets: run a verb, find an op in
history, pick the logits to show, write a trace or a report, and phrase errors in one line."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Callable

from qdbg.errors import ExpressionError, QdbgError


def one_line(e: BaseException) -> str:
    """An exception as one line: QdbgErrors by message, anything else with its type."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return msg if isinstance(e, QdbgError) else f"{type(e).__name__}: {msg}"


def bare_message(e: ExpressionError) -> str:
    """ExpressionError's message without the ' at column N: expr' tail (the caret shows those)."""
    msg = str(e)
    for tail in (f": {e.expr!r}", f" at column {e.column}"):
        if msg.endswith(tail):
            msg = msg[: -len(tail)]
    return msg


def run_verb(session: Any, verb: str, arg: Any, should_stop: Callable[[], bool]) -> Any:
    """Call one Session verb by name; returns its Stop (None for set_scope). A wait for an op that
    the user interrupted (qdbg.tui.prefetch.Interrupted) is an 'interrupted' stop where it was."""
    from qdbg.tui.prefetch import Interrupted

    try:
        return _run_verb(session, verb, arg, should_stop)
    except Interrupted:
        from qdbg.session import Stop

        return Stop("interrupted", session.current)


def _run_verb(session: Any, verb: str, arg: Any, should_stop: Callable[[], bool]) -> Any:
    if verb == "step":
        return session.step()
    if verb == "run_to":
        return session.run_to(arg, should_stop=should_stop)
    if verb == "set_scope":
        session.set_scope(arg)
        return None
    if verb in ("next_layer", "cont", "run_to_end"):
        return getattr(session, verb)(should_stop=should_stop)
    if verb == "decode":
        # one more token chosen by A's argmax: finish the pass under way, then step into the new one
        session.decode(1, "a")
        while not (session.current is not None and session.current.name == "result_output"
                   and session.cursor == len(session.history) - 1):
            st = session.step()
            if st.reason == "end" or should_stop():
                return st
        return session.step()
    if verb == "patch":     # ("add", Patch) or ("remove", index): restart, re-run to the end (breakpoints kept)
        what, x = arg
        (session.add_patch if what == "add" else session.remove_patch)(x)
        return session.run_to_end(should_stop=should_stop)
    if verb == "restart":   # before the first op, as at launch
        from qdbg.session import Stop

        session.restart()
        return Stop("restart", None)
    raise ValueError(f"unknown verb {verb!r}")


def check_scope(session: Any, value: str) -> None:
    """UsageError unless `value` is 'last', 'all' or a position the run has or will have."""
    from qdbg.errors import UsageError
    from qdbg.scope import Scope

    sc = Scope.parse(value)
    n = len(session.tokens) + len(session.pending)
    if sc.position is not None and sc.position >= n:
        raise UsageError(f"scope {sc.position}: the run has {n} tokens (positions 0..{n - 1})")


def find_op(history: list, cursor: int, target: str, wrap: bool, same_pass: bool = False) -> Any:
    """The first op after `cursor` (then from the start, if `wrap`) whose name is `target` or
    matches it as a glob, that reads the GGUF tensor `target` (`blk.7.ffn_down.weight`), or whose
    layer is `target` when it is a number; None if none does. With `same_pass`, only ops of the
    cursor's pass count (from its start when wrapping)."""
    if target.strip().isdigit():
        layer = int(target)

        def want(r: Any) -> bool:
            return r.layer == layer
    else:
        def want(r: Any) -> bool:
            return r.name == target or fnmatch.fnmatchcase(r.name, target) or r.weight == target
    order = history[cursor + 1:] + (history[: cursor + 1] if wrap else [])
    if same_pass and 0 <= cursor < len(history):
        step = history[cursor].step
        order = [r for r in order if r.step == step]
    return next((r for r in order if want(r)), None)


def logits_record(session: Any) -> Any:
    """The record whose logits the pane shows: the last at or before the cursor, else the first after."""
    h, c = session.history, session.cursor
    for r in reversed(h[: c + 1]):
        if r.logits:
            return r
    return next((r for r in h[c + 1:] if r.logits), None)


def write_file(kind: str, session: Any, path: Path) -> None:
    """Write a trace ('trace', qdbg.trace.save_trace) or the markdown report ('report') through
    qdbg.util's save core; '-' is refused, since the TUI owns standard output."""
    if str(path) == "-":
        raise QdbgError("'-' (standard output) is the TUI's screen; name a file")
    if kind == "trace":
        try:
            from qdbg.trace import save_trace
        except ImportError:
            raise QdbgError("saving traces needs qdbg.trace, which is not available") from None
        save_trace(session, path)
        return
    try:
        from qdbg.report import write_report
    except ImportError:
        raise QdbgError("reports need qdbg.report, which is not available") from None

    write_report(session, path)  # and its images beside it (qdbg.report.plots), when matplotlib is there
