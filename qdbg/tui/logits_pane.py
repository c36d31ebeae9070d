"""LogitsPane: A's and B's top-k next tokens side by side (piece, probability, rank change), KL
and JS, and a top-1 flip banner that cannot be missed (the pane's border turns red too)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

from qdbg.findings import flips
from qdbg.tui.body import show
from qdbg.tui.fmt import num, pct, piece_of, piece_text, row

EMPTY = "no logits yet — e runs to the end"


def rank_change(tid: int, mine: int, other_top: list[dict], k: int) -> tuple[str, str]:
    """How the other side ranks token `tid` that this side ranks `mine` (1-based): '=', '↓2', '↑1',
    or '>k' when it is outside the other side's top-k; with a style."""
    ids = [e["id"] for e in other_top]
    if tid not in ids:
        return f">{k}", "bold red"
    d = ids.index(tid) + 1 - mine
    if d == 0:
        return "=", "green"
    return (f"↓{d}", "yellow") if d > 0 else (f"↑{-d}", "cyan")


def _piece(session: Any, e: dict) -> str:
    p = e.get("piece")
    return piece_text(p if p is not None else piece_of(session, e["id"]), 8)


def flip_banner(session: Any, pos: dict, width: int) -> list[Text]:
    """Full-width lines: red 'TOP-1 FLIP' with both picks, or a green 'top-1 agrees'."""
    a, b = pos["a"]["top"][0], pos["b"]["top"][0]
    if pos.get("flip"):
        style = "bold white on red"
        return [row([" ⚠ TOP-1 FLIP ⚠"], [width], style=style),
                row([f" A → {_piece(session, a)} #{a['id']}    B → {_piece(session, b)} #{b['id']}"], [width],
                    style=style)]
    return [row([f" ✓ top-1 agrees: {_piece(session, a)} #{a['id']}"], [width], style="bold white on dark_green")]


R_COLUMN_WIDTH = 64
"""From this pane width on, R's top-k gets a column beside A's and B's (when R ran)."""


def topk_lines(session: Any, pos: dict, k: int, width: int, r_top: list | None = None) -> list[Text]:
    """A's and B's top-k side by side: piece, probability, and (if it fits) where the other side
    ranks it; R's top-k (piece, probability) in a third column when given and there is room."""
    ranks = width >= 44
    with_r = bool(r_top) and width >= R_COLUMN_WIDTH
    n_cols = (7 if ranks else 5) + (2 if with_r else 0)
    fixed = 2 + 2 * (6 + (4 if ranks else 0)) + (6 if with_r else 0) + (n_cols - 1)   # '#', probs, ranks, gaps
    piece_w = max(4, (width - fixed) // (3 if with_r else 2))
    cols = [("#", 2, "r")]
    for me, other in (("A", "B"), ("B", "A")):
        cols += [(f"{me} token", piece_w, "l"), ("prob", 6, "r")] + ([(f"in {other}", 4, "r")] if ranks else [])
    if with_r:
        cols += [("R token", piece_w, "l"), ("prob", 6, "r")]
    widths, aligns = [c[1] for c in cols], "".join(c[2] for c in cols)
    out = [row([c[0] for c in cols], widths, aligns, style="bold")]
    ta, tb = pos["a"]["top"], pos["b"]["top"]
    for i in range(max(len(ta), len(tb))):
        cells: list[Any] = [str(i + 1)]
        for mine, other in ((ta, tb), (tb, ta)):
            if i >= len(mine):
                cells += [""] * (3 if ranks else 2)
                continue
            e = mine[i]
            prob = pct(e.get("prob"), 2) if e.get("prob") is not None else num(e.get("logit"))
            cells += [_piece(session, e), prob]
            if ranks:
                ch, style = rank_change(e["id"], i + 1, other, k)
                cells.append(Text(ch, style=style))
        if with_r:
            e = r_top[i] if r_top and i < len(r_top) else None
            cells += ["", ""] if e is None else [
                _piece(session, e), pct(e.get("prob"), 2) if e.get("prob") is not None else num(e.get("logit"))]
        out.append(row(cells, widths, aligns, style="bold" if i == 0 else ""))
    return out


class LogitsPane(VerticalScroll, can_focus=False):
    """Set `session` once, then `record` to a Record with logits (or None)."""

    DEFAULT_CSS = """
    LogitsPane { scrollbar-size-vertical: 1; scrollbar-gutter: stable; }
    LogitsPane > Static { width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    record: reactive[Any] = reactive(None, always_update=True, repaint=False)   # the body repaints itself
    flipped: reactive[bool] = reactive(False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session: Any = None

    def compose(self):
        yield Static(EMPTY, id="logits-body")

    def on_resize(self) -> None:
        self.record = self.record

    def watch_flipped(self, flipped: bool) -> None:
        self.set_class(flipped, "-flip")

    def watch_record(self, rec: Any) -> None:
        body = self.query_one("#logits-body", Static)
        lg = (rec.logits or {}).get("A~B") if rec is not None else None
        if not lg or not lg.get("positions"):
            self.flipped = False
            self.border_subtitle = ""
            show(body, Text(EMPTY, style="dim"))
            return
        pos = lg["positions"][-1]
        self.flipped = bool(pos.get("flip"))
        s = self.session
        self.border_subtitle = f"pass {rec.step}, next token after position {pos.get('pos')}"
        width = self.scrollable_content_region.width or 46
        parts = flip_banner(s, pos, width)
        parts.append(Text(f"KL(A‖B) {num(pos.get('kl_ab'), '.4g')}  KL(B‖A) {num(pos.get('kl_ba'), '.4g')}  "
                          f"JS {num(pos.get('js'), '.3g')}", no_wrap=True, overflow="ellipsis"))
        parts.append(Text(f"top-{lg['k']} overlap {pct(pos.get('topk_overlap'), 0)}  margin A "
                          f"{num(pos['a'].get('margin'), '.3g')} B {num(pos['b'].get('margin'), '.3g')}",
                          no_wrap=True, overflow="ellipsis"))
        if len(lg["positions"]) > 1 and lg.get("flip_positions"):
            parts.append(Text(f"flips at {len(lg['flip_positions'])} of {lg['n_pos']} positions",
                              style="bold red"))
        verdict = next((f for f in flips([rec]) if f.pos == pos.get("pos")), None)
        if verdict is not None and verdict.flip:
            parts.append(Text(verdict.because(), style="bold red" if verdict.verdict == "decisive"
                              else "yellow", no_wrap=True, overflow="ellipsis"))
        ar = (rec.logits or {}).get("A~R")
        r_top = ar["positions"][-1]["b"]["top"] if ar and ar.get("positions") else None
        parts += topk_lines(s, pos, lg["k"], width, r_top)
        show(body, parts)
