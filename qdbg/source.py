"""OpSource: what the debugger walks — a stream of ops across the sides, live or recorded.

The debugger (qdbg.debugger) owns the cursor, history, verbs, breakpoints and scope; a source only
hands out the next op and answers questions about the run. Two implementations:
qdbg.live.LiveSource (engines in lockstep, with interventions) and qdbg.replay.TraceSource (a
loaded trace). Anything else that yields Records in pass order can be debugged the same way.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from qdbg.catalogue import Catalogue
from qdbg.records import Record
from qdbg.scope import Scope

DRIVERS = ("a", "b", "text")


@runtime_checkable
class OpSource(Protocol):
    """A source of ops. Attributes: labels (["A", "B"] or ["A", "B", "R"]), models (label ->
    a Model or a stand-in with path/name/config), prompt, tokens (every token fed so far), pending
    (decode steps queued: a token id, or None to choose by `driver`), driver, mode, pieces (id ->
    text, or None), prompt_text, catalogue (the ops of a pass, or None if unknown)."""

    labels: list[str]
    models: dict[str, Any]
    prompt: list[int]
    tokens: list[int]
    pending: list[int | None]
    driver: str
    mode: str
    pieces: Any
    prompt_text: str | None
    catalogue: Catalogue | None

    def reset(self) -> None:
        """Back to before the first op."""

    def next_op(self, index: int) -> Record | None:
        """The next op as a Record numbered `index` (identity and values, no metrics unless
        recorded), or None when nothing is left."""

    @property
    def exhausted(self) -> bool:
        """True when next_op would return None."""

    def held_positions(self, rec: Record) -> tuple[int, ...] | None:
        """The token positions rec.values hold (rec.positions when complete; None: no values)."""

    def recorded(self, rec: Record, scope: Scope) -> bool:
        """Fill rec's metrics from a recording made with `scope`; False if there is none."""

    def check_scope(self, scope: Scope) -> None:
        """UsageError if this source cannot show `scope` (a trace whose tensors miss it)."""

    def decode(self, n: int, driver: str, text_tokens: Sequence[int] | None) -> None:
        """Queue n more tokens (UsageError if the source cannot compute)."""

    def numerics_info(self) -> dict[str, Any]:
        """The numeric mode, the llama.cpp build it reproduces, and the run settings (JSON)."""

    def numerics_text(self) -> str:
        """One line for headers: the mode and what it reproduces."""

    def interventions(self) -> list[dict[str, Any]]:
        """What the source does to the run (weight patches, activation resyncs), as JSON."""


def numerics_label(info: dict[str, Any]) -> str:
    """A few words naming a numerics JSON record: the mode and the build it reproduces."""
    prof = info.get("profile") or {}
    return f"{info.get('mode', '?')}" + (f" ({prof['label']})" if prof.get("label") else "")
