"""DiffPane: one op's pairwise metrics (A vs B), its most divergent elements with their token and
coordinates, and |a-b| profiled over channels and over tokens as sparklines."""

from __future__ import annotations

from typing import Any

import numpy as np

from rich.text import Text
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

from qdbg import metrics
from qdbg.errors import QdbgError
from qdbg.tui.body import show
from qdbg.tui.fmt import NONFINITE, finite, fit_num, heat_color, num, pct, piece_of, piece_text, row, spark

N_TOP = 5
HALF_MAX = 30
"""Cells of one name/value column pair of the metrics at most."""
NUM_MAX = 12
"""Cells of a number column of the most divergent elements at most."""
EMPTY = "no op yet — s steps"


def abs_position(session: Any, rec: Any, i: int) -> int | None:
    """The token position of index `i` along the token axis of a record's scoped values."""
    return session.scope.absolute(rec.positions, i)


def scoped_values(session: Any, rec: Any) -> tuple[Any, Any] | None:
    """(A, B) values restricted to the session's scope, or None when they are not available."""
    if "A" not in rec.values or "B" not in rec.values:
        return None
    a, b = session.scoped(rec, "A"), session.scoped(rec, "B")
    return None if a is None or b is None else (a, b)


def metrics_lines(pair: dict, width: int) -> list[Text]:
    """The pairwise metrics in two name/value column pairs."""
    rel, amp = pair.get("rel_rms"), pair.get("amp")
    half = min(HALF_MAX, (width - 2) // 2)   # a wide pane keeps names next to their values
    widths = [7, half - 8, 8, min(HALF_MAX, width - half - 2) - 8]
    amp_t = Text(f"{num(amp, '.3g')}×" if amp is not None else "—",
                 style="bold red" if finite(amp) and amp > 1.5 else "")
    cells = [
        ("rel_rms", Text(pct(rel, 2), style=f"bold {heat_color(rel)}"), "sqnr", f"{num(pair.get('sqnr'), '.1f')} dB"),
        ("cos", num(pair.get("cos"), ".5f"), "amp", amp_t),
        ("max_abs", fit_num(pair.get("max_abs"), widths[1]), "mean_abs", fit_num(pair.get("mean_abs"), widths[3])),
        ("max_rel", fit_num(pair.get("max_rel"), widths[1]), "flips", num(pair.get("sign_flips"))),
    ]
    return [row([Text(n1, style="bold"), v1, Text(n2, style="bold"), v2], widths, "lrlr", gap=1)
            for n1, v1, n2, v2 in cells]


def attribution_text(pair: dict, rec: Any = None) -> Text | None:
    """'local 2.9%  inherited 29%  noise 0.3%': what this op adds itself, what it carried in (both
    relative to ||B||, qdbg.attribution), and A against its flash-attention shadow (--noise); with
    the interventions that touched the op. None when none of it was measured."""
    loc, inh, noi = pair.get("local"), pair.get("inherited"), pair.get("noise")
    ivs = list(getattr(rec, "interventions", None) or [])
    if loc is None and inh is None and noi is None and not ivs:
        return None
    t = Text(no_wrap=True, overflow="ellipsis")
    if loc is not None or inh is not None:
        t.append("local ", style="bold")
        t.append(pct(loc, 2), style=f"bold {heat_color(loc)}")
        t.append("  inherited ", style="bold")
        t.append(pct(inh, 2), style=heat_color(inh))
    if noi is not None:
        t.append("  noise ", style="bold")
        rel = pair.get("rel_rms")
        t.append(pct(noi, 2), style="bold yellow" if finite(rel) and finite(noi) and noi >= rel else "")
    for iv in ivs:
        t.append(f"  [{iv}]", style="bold magenta")
    return t


def nonfinite_text(pair: dict) -> Text | None:
    """A loud line when NaN/Inf pairs were skipped, with the first one's place and values."""
    if not pair.get("n_nonfinite"):
        return None
    f = pair.get("first_nonfinite") or {}
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f" {pair['n_nonfinite']}/{pair.get('n')} NaN/Inf ", style=NONFINITE)
    t.append(f" first {f.get('at')}: A {num(f.get('a'))} B {num(f.get('b'))}")
    return t


def token_label(session: Any, pos: int | None) -> str:
    """'6 'cache'': a token position with its piece."""
    if pos is None or pos >= len(session.tokens):
        return "—"
    return f"{pos} {piece_text(piece_of(session, session.tokens[pos]), 8)}"


def coordinate(session: Any, axis: str, i: int) -> str:
    """One coordinate of an element: 'ch38', a vocabulary entry as its token text ('hat'), 'he3'."""
    if axis == "channel":
        return f"ch{i}"
    if axis == "vocab":
        return piece_text(piece_of(session, i), 8)
    return f"{axis[:2]}{i}"


def top_lines(session: Any, rec: Any, pair: dict, width: int) -> list[Text]:
    """The most divergent elements: coordinates (with the token when the scope spans several),
    A, B and |a-b|."""
    per_token = session.scope == "all" and "token" in rec.axes
    where_w = 11 if "vocab" in rec.axes else 7
    fixed = [9, where_w] if per_token else [where_w]
    num_w = min(NUM_MAX, max(6, (width - sum(fixed) - len(fixed) - 2) // 3))
    widths = fixed + [num_w] * 3
    aligns = "l" * len(fixed) + "rrr"
    head = (["tok"] if per_token else []) + ["where", "A", "B", "|Δ|"]
    at_token = not per_token and "token" in rec.axes
    where = f" at token {token_label(session, abs_position(session, rec, 0))}" if at_token else ""
    if not pair.get("top"):
        return [Text(f"A and B agree exactly{where}", style="bold green")]
    out = [Text(f"most divergent{where}", style="bold underline")]
    out.append(row(head, widths, aligns, style="bold"))
    for e in (pair.get("top") or [])[:N_TOP]:
        at = dict(e.get("at") or {})
        i = at.pop("token", None)
        where = " ".join(coordinate(session, k, v) for k, v in at.items())
        cells = [token_label(session, abs_position(session, rec, i))] if per_token else []
        cells += [where, *(fit_num(e.get(k), num_w) for k in ("a", "b", "abs_diff"))]
        out.append(row(cells, widths, aligns))
    return out


def profiles(session: Any, rec: Any, width: int) -> Text:
    """|a-b| over the last axis (channels) in scope, and over the token axis of the saved values."""
    t = Text(no_wrap=True, overflow="ellipsis")
    vals = scoped_values(session, rec)
    if vals is None or not rec.axes:
        t.append("no tensors for a distribution view", style="dim")
        return t
    try:
        ch = metrics.diff_profile(vals[0], vals[1], axis=len(rec.axes) - 1, reduce="max")
        t.append(f"max |Δ| per {rec.axes[-1]} ({ch.size}), peak at {int(np.nanargmax(ch)) if np.isfinite(ch).any() else '—'}\n",
                 style="bold")
        t.append_text(spark(ch, width))
        if "token" in rec.axes and len(rec.positions) > 1:
            full = metrics.diff_profile(rec.values["A"], rec.values["B"], axis=rec.axes.index("token"))
            t.append(f"\nmean |Δ| per token ({full.size})\n", style="bold")
            t.append_text(spark(full, width))
    except QdbgError as e:
        t.append(str(e), style="red")
    return t


class DiffPane(VerticalScroll, can_focus=False):
    """Set `session` once, then `record` to show its A~B metrics."""

    DEFAULT_CSS = """
    DiffPane { scrollbar-size-vertical: 1; scrollbar-gutter: stable; }
    DiffPane > Static { width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    record: reactive[Any] = reactive(None, always_update=True, repaint=False)   # the body repaints itself

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session: Any = None

    def compose(self):
        yield Static(EMPTY, id="diff-body")

    def on_resize(self) -> None:
        self.record = self.record

    def watch_record(self, rec: Any) -> None:
        body = self.query_one("#diff-body", Static)
        if rec is None or self.session is None:
            body.update(Text(EMPTY, style="dim"))
            return
        pair = rec.pair
        if not pair:
            body.update(Text("no A~B values in this scope", style="yellow"))
            return
        width = self.scrollable_content_region.width or 40
        parts = metrics_lines(pair, width)
        att = attribution_text(pair, rec)
        if att is not None:
            parts.append(att)
        bad = nonfinite_text(pair)
        if bad is not None:
            parts.append(bad)
        for key in ("A~R", "B~R"):
            if key in rec.pairs:
                r = rec.pairs[key].get("rel_rms")
                parts.append(Text.assemble((f"{key} rel_rms ", "bold"), (pct(r, 2), heat_color(r))))
        parts += top_lines(self.session, rec, pair, width)
        parts.append(profiles(self.session, rec, width))
        show(body, parts)   # no screen layout when the line count is unchanged
