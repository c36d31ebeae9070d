"""Weight patches in the TUI: `p` on an op with a weight lets A compute it with B's weight (`P`:
R's) and re-runs from the start keeping the breakpoints; `u` lists the patches (and resyncs) in
force and removes the chosen one. After a re-run the state line says whether the flip is gone.

The screen and three helpers kept free of the app: which patch a key means at an op
(`patch_for`), the flips of a history (`flip_state`) and what a patch changed (`patch_effect`).
"""

from __future__ import annotations

from typing import Any, Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from qdbg.errors import UsageError


def patch_for(session: Any, rec: Any, side: str) -> Any:
    """The patch that gives A side `side`'s copy of the weight `rec` reads; UsageError when there
    is none to give (no op, a weightless op, no side R, a replay)."""
    from qdbg.live import Patch

    if not hasattr(session.source, "set_interventions"):
        raise UsageError("a replay cannot patch: it only shows what was recorded")
    if rec is None or not rec.weight:
        raise UsageError("this op reads no weight: patch at a matmul or norm (Qcur-3, ffn_down-3, ...)")
    if side not in session.labels:
        raise UsageError(f"there is no side {side}: start qdbg with --ref R.gguf to patch from R")
    return Patch(rec.weight, side)


def flip_state(history: Sequence[Any]) -> set[tuple[int, int]] | None:
    """The (pass, position) pairs where A's and B's top-1 differ, over the passes measured so far;
    None when no pass reached the logits."""
    from qdbg.findings import flips

    if not any(r.logits for r in history):
        return None
    return {(f.step, f.pos) for f in flips(history) if f.flip}


def _where(flips: set[tuple[int, int]]) -> str:
    return ", ".join(f"pass {s} pos {p}" for s, p in sorted(flips)[:3]) + (" …" if len(flips) > 3 else "")


def patch_effect(label: str, before: set[tuple[int, int]] | None, after: set[tuple[int, int]] | None) -> str:
    """One line: what was patched and whether the top-1 flip is gone, stays or appeared."""
    if after is None:
        return f"{label} · re-run did not reach the logits"
    if before is None:
        return f"{label} · " + (f"top-1 flips at {_where(after)}" if after else "A and B pick the same top-1")
    gone, new = before - after, after - before
    if before and not after:
        return f"{label} · the flip is gone (was at {_where(before)})"
    if not before and not after:
        return f"{label} · still no flip"
    parts = []
    if gone:
        parts.append(f"gone at {_where(gone)}")
    if new:
        parts.append(f"new flip at {_where(new)}")
    kept = after & before
    if kept:
        parts.append(f"still flips at {_where(kept)}")
    return f"{label} · " + "; ".join(parts)


class PatchesScreen(ModalScreen["int | None"]):
    """The patches and resyncs in force; Enter / d / Delete on a patch removes it (dismisses with
    its index), Esc closes (None). Resyncs are listed but set on the command line only."""

    DEFAULT_CSS = """
    PatchesScreen { align: center middle; }
    PatchesScreen > Vertical { width: 80; height: auto; max-height: 80%; padding: 1 2;
                               border: thick $accent; background: $surface; }
    PatchesScreen OptionList { height: auto; max-height: 20; }
    """
    BINDINGS = [
        Binding("d,delete", "remove", "remove", id="patches.remove"),
        Binding("escape,q,u", "close", "close", id="patches.close"),
    ]

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.patches = list(session.patches)
        self.resyncs = list(session.resyncs)

    def compose(self) -> ComposeResult:
        with Vertical():
            if self.patches:
                yield Static("weight patches (Enter or d removes one and re-runs; Esc closes)")
                yield OptionList(*[Option(p.label(), id=str(i)) for i, p in enumerate(self.patches)], id="patch-list")
            else:
                yield Static("no weight patches: p on an op with a weight patches it from B, P from R")
            if self.resyncs:
                yield Static("resyncs (command line): " + "; ".join(r.label() for r in self.resyncs))

    def on_mount(self) -> None:
        if self.patches:
            ol = self.query_one(OptionList)
            ol.highlighted = 0
            ol.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def action_remove(self) -> None:
        if not self.patches:
            return
        i = self.query_one(OptionList).highlighted
        self.dismiss(None if i is None else int(i))

    def action_close(self) -> None:
        self.dismiss(None)
