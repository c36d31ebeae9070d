"""SessionHeader: the models and their quant mixes, the position line (mode, scope, op i of n,
layer, token, pass), and a state line saying what the last verb did."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from qdbg.tui.fmt import piece_of, piece_text

HINT = "s step · l next layer · c continue · e run to end · t/a breakpoints · / go to · ? help"
STATE_STYLES = {"breakpoint": "bold white on red", "running": "bold black on yellow",
                "interrupted": "bold black on dark_orange", "error": "bold white on red",
                "end": "bold white on dark_green", "loading": "bold black on yellow"}


def position_text(session: Any, rec: Any) -> str:
    """'op 3 of 37' (or 'of 3+' while the pass is still being computed)."""
    n = len(session.history)
    if rec is None:
        return f"op 0 of {n}" + ("" if pass_complete(session) else "+")
    return f"op {rec.index + 1} of {n}" + ("" if pass_complete(session) else "+")


def pass_complete(session: Any) -> bool:
    h = session.history
    return bool(h) and h[-1].name == "result_output" and not session.pending


def token_text(session: Any, rec: Any) -> str:
    """The token position(s) the metrics cover at this op, with the token's piece."""
    scope = session.scope
    if rec is None or not rec.positions:
        return "token —"
    if scope == "all":
        return f"tokens {rec.positions[0]}–{rec.positions[-1]}" if len(rec.positions) > 1 else \
            f"token {rec.positions[0]}"
    pos = scope.token(rec.positions)
    if pos not in rec.positions:
        return f"token {pos} (not in this pass)"
    tid = session.tokens[pos] if pos < len(session.tokens) else None
    return f"token {pos} {piece_text(piece_of(session, tid)) if tid is not None else ''}".rstrip()


def interventions_text(session: Any) -> str:
    """'patch blk.3.attn_v.weight: A<-B; resync l_out-5: A<-B' — what changes the run, or ''."""
    try:
        ivs = session.interventions()
    except AttributeError:
        return ""
    return "; ".join(str(iv.get("label") or iv) for iv in ivs or [])


def position_parts(session: Any) -> list[tuple[int, str, str]]:
    """The position line's parts as (priority, full text, short text); 0 is kept longest."""
    rec = session.current
    layer = "—" if rec is None or rec.layer is None else str(rec.layer)
    parts = [(1, f"mode {session.numerics_label()}", f"{session.mode}"), (3, f"scope {session.scope}", ""),
             (0, position_text(session, rec), ""), (2, f"layer {layer}", f"L{layer}"),
             (2, token_text(session, rec), ""), (4, f"pass {rec.step if rec else 0}", "")]
    if rec is not None:
        parts.insert(3, (0, rec.name, ""))
    return parts


def fit_parts(parts: list[tuple[int, str, str]], width: int, sep: str = " │ ") -> str:
    """Join parts with `sep` in `width` cells: shorten, then drop, the least important first."""
    cur = [(pr, full) for pr, full, _ in parts]
    shorts = [short for _, _, short in parts]

    def text() -> str:
        return sep.join(t for _, t in cur if t)

    for level in (4, 3, 2, 1):
        if len(text()) <= width:
            break
        for i, (pr, t) in enumerate(cur):
            if pr == level and len(text()) > width:
                cur[i] = (pr, shorts[i])
    return text()


class SessionHeader(Widget):
    """Three lines: which models are compared, where the cursor is, what just happened."""

    DEFAULT_CSS = """
    SessionHeader {
        height: 3;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        background: $panel;
        color: $text;
    }
    """

    cursor: reactive[int] = reactive(-1, always_update=True)
    state: reactive[str] = reactive("")
    state_kind: reactive[str] = reactive("")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session: Any = None

    def render(self) -> Text:
        s = self.session
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append("qdbg ", style="bold")
        if s is None:
            out.append(" loading…\n\n")
        else:
            width = self.content_region.width or 120
            # every file name first; the quant mixes only if all of them fit too
            ivs = interventions_text(s)
            mixes = sum(len(f" {lab}   {s.models[lab].path.name} [{s.models[lab].type_summary()}]  ")
                        for lab in s.labels) + 5 + (len(ivs) + 3 if ivs else 0) <= width
            for lab in s.labels:
                m = s.models[lab]
                out.append(f" {lab} ", style="bold reverse")
                out.append(f" {m.path.name} ", style="bold")
                if mixes:
                    out.append(f"[{m.type_summary()}]  ", style="dim")
            if ivs:
                out.append(f" {ivs} ", style="bold white on magenta")
            out.append("\n")
            out.append(fit_parts(position_parts(s), width))
            out.append("\n")
        if self.state:
            out.append(f" {self.state} ", style=STATE_STYLES.get(self.state_kind, "reverse"))
        else:
            out.append(HINT, style="dim")
        return out
