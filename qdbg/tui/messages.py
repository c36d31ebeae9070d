"""Messages of the qdbg TUI: small dataclasses, past tense, posted by workers and widgets to the app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class SessionLoaded(Message):
    """The loader worker built the session."""

    session: Any


@dataclass
class LoadFailed(Message):
    """The loader worker raised; `error` is one line."""

    error: str


@dataclass
class RunFinished(Message):
    """A verb run in a worker returned `stop` (a qdbg.session.Stop); `wanted` is a run_to target."""

    verb: str
    stop: Any
    wanted: str | None = None


@dataclass
class RunFailed(Message):
    """A verb run in a worker raised; `error` is one line."""

    verb: str
    error: str


@dataclass
class FileWritten(Message):
    """A trace or report was written; `kind` is 'trace' or 'report'."""

    kind: str
    path: str


@dataclass
class WriteFailed(Message):
    """Writing a trace or report failed; `error` is one line."""

    kind: str
    error: str


@dataclass
class OpClicked(Message):
    """The user clicked the op with history index `index` in the timeline."""

    index: int


@dataclass
class ExpressionSubmitted(Message):
    """The user entered a breakpoint condition in the breakpoints pane."""

    expr: str


@dataclass
class BreakpointToggleRequested(Message):
    """The user asked to enable/disable breakpoint `bp_id`."""

    bp_id: int


@dataclass
class BreakpointRemoveRequested(Message):
    """The user asked to delete breakpoint `bp_id`."""

    bp_id: int
