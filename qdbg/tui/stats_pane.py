"""StatsPane: one op's per-side statistics side by side (RMS, mean, std, min, max, first values)
with A's difference from B in percent — the table people write by hand when studying quant error."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

from qdbg.tui.body import show
from qdbg.tui.fmt import NONFINITE, fit_num, pct_diff, row

ROWS = ("rms", "mean", "std", "min", "max", "absmax")
N_FIRST = 4
LABEL_W, DELTA_W = 7, 8
SIDE_MAX = 14
"""A side's column never grows past this (a wide pane keeps its numbers together)."""
EMPTY = "no op yet — s steps"


def stats_lines(rec: Any, labels: list[str], width: int) -> list[Text]:
    """Rows: the stats keys, NaN/Inf counts and the first values; columns: each side, then Δ% A vs B."""
    side_w = min(SIDE_MAX, max(6, (width - LABEL_W - DELTA_W - len(labels) - 1) // len(labels)))
    widths = [LABEL_W] + [side_w] * len(labels) + [DELTA_W]
    aligns = "l" + "r" * (len(labels) + 1)
    st = {lab: rec.stats.get(lab) or {} for lab in labels}
    out = [row(["", *labels, "Δ% A/B"], widths, aligns, style="bold")]
    for key in ROWS:
        out.append(row([Text(key, style="bold"), *(fit_num(st[lab].get(key), side_w) for lab in labels),
                        Text(pct_diff(st["A"].get(key), st["B"].get(key)), style="magenta")], widths, aligns))
    bad = any(st[lab].get("nan_count") or st[lab].get("inf_count") for lab in labels)
    out.append(row(["nan/inf", *(f"{st[lab].get('nan_count', '—')}/{st[lab].get('inf_count', '—')}"
                                 for lab in labels), ""], widths, aligns, style=NONFINITE if bad else "dim"))
    firsts = {lab: st[lab].get("first") or [] for lab in labels}
    for i in range(min(N_FIRST, max((len(v) for v in firsts.values()), default=0))):
        vals = [firsts[lab][i] if i < len(firsts[lab]) else None for lab in labels]
        out.append(row([f"x[{i}]", *(fit_num(v, side_w) for v in vals), pct_diff(vals[0], vals[1])], widths, aligns,
                       style="" if i == 0 else "dim"))
    return out


def head_lines(rec: Any, labels: list[str]) -> list[Text]:
    """The op's name, kind, shape and weight with each side's quant type (always two lines, so that
    stepping keeps the pane's height and the screen's layout)."""
    shape = list(next(iter(rec.values.values())).shape) if rec.values else "?"
    out = [Text.assemble((rec.name, "bold"), (f"  {rec.kind}  shape {shape}", "dim"), no_wrap=True)]
    if rec.weight:
        out.append(Text.assemble((f"{rec.weight}  ", "dim"),
                                 "  ".join(f"{lab} {rec.weight_types.get(lab) or '—'}" for lab in labels),
                                 no_wrap=True))
    else:
        out.append(Text("no weight", style="dim"))
    return out


class StatsPane(VerticalScroll, can_focus=False):
    """Set `session` once, then `record` (a qdbg.session.Record, or None) to show it."""

    DEFAULT_CSS = """
    StatsPane { scrollbar-size-vertical: 1; scrollbar-gutter: stable; }
    StatsPane > Static { width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    record: reactive[Any] = reactive(None, always_update=True, repaint=False)   # the body repaints itself

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session: Any = None

    def compose(self):
        yield Static(Text(EMPTY, style="dim"), id="stats-body")

    def on_resize(self) -> None:
        self.record = self.record

    def watch_record(self, rec: Any) -> None:
        body = self.query_one("#stats-body", Static)
        if rec is None or self.session is None:
            show(body, Text(EMPTY, style="dim"))
            return
        labels = list(self.session.labels)
        parts = head_lines(rec, labels)
        if not rec.stats:
            parts.append(Text("no values: this op has no token in the scope", style="yellow"))
        else:
            parts += stats_lines(rec, [lab for lab in labels if lab in rec.stats], self.scrollable_content_region.width or 38)
        show(body, parts)
