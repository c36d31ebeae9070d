"""Timeline: every computed op, grouped by pass and layer, colored by A~B divergence.

A line-API scroll view (only visible lines are drawn, so long histories stay cheap). Rows are
group headings ('layer 3', with the layer output's rel_rms) and ops: cursor mark, breakpoint
mark, name, kind, rel_rms on the heat scale. Clicking an op posts OpClicked.
"""

from __future__ import annotations

from typing import Any

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from qdbg.tui.fmt import NONFINITE, heat_color, op_expr, pct
from qdbg.tui.messages import OpClicked

NAME_W, KIND_W = 14, 8


def group_of(rec: Any) -> tuple[int, str]:
    """(pass, heading) of an op: 'embeddings', 'layer N' or 'output'."""
    if rec.layer is not None:
        return rec.step, f"layer {rec.layer}"
    return rec.step, ("output" if rec.name.startswith("result") else "embeddings")


def op_breakpoints(session: Any) -> dict[str, bool]:
    """{op name: enabled} for the ops in history that have a breakpoint set by name."""
    exprs: dict[str, bool] = {}
    for bp in session.breakpoints:
        exprs[bp.expr] = exprs.get(bp.expr, False) or bp.enabled
    return {r.name: exprs[k] for r in session.history if (k := op_expr(r.name)) in exprs}


class Timeline(ScrollView, can_focus=True, inherit_bindings=False):
    """The op timeline: set `session`, then bump `revision` when history or metrics change and
    set `cursor` when the session cursor moves."""

    COMPONENT_CLASSES = {"timeline--cursor", "timeline--heading", "timeline--hit"}
    DEFAULT_CSS = """
    Timeline {
        height: 1fr;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
    }
    Timeline > .timeline--cursor { background: $accent 40%; text-style: bold; }
    Timeline > .timeline--heading { color: $text-muted; text-style: bold; }
    Timeline > .timeline--hit { color: $error; text-style: bold; }
    """

    BINDINGS = [  # no left/right: those keys step the session
        Binding("up", "scroll_up", "scroll up", show=False),
        Binding("down", "scroll_down", "scroll down", show=False),
        Binding("pageup", "page_up", "page up", show=False),
        Binding("pagedown", "page_down", "page down", show=False),
        Binding("home", "scroll_home", "top", show=False),
        Binding("end", "scroll_end", "bottom", show=False),
    ]

    cursor: reactive[int] = reactive(-1, always_update=True)
    revision: reactive[int] = reactive(0, always_update=True)
    hit: reactive[int] = reactive(-1)
    """History index of the op where a breakpoint last fired (-1: none)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session: Any = None
        # ("pass", (step, first rec)) | ("head", (title, the group's last rec)) | ("op", history index)
        self._rows: list[tuple[str, Any]] = []
        self._row_of: dict[int, int] = {}
        self._bps: dict[str, bool] = {}

    # -- state -> rows ---------------------------------------------------------------------
    def watch_revision(self) -> None:
        self._rebuild()

    def watch_cursor(self) -> None:
        self.call_after_refresh(self.scroll_to_cursor)
        self.refresh()

    def scroll_to_cursor(self) -> None:
        """Keep the cursor's row centred (clamped at the ends), like a debugger's source view.

        Centring makes the scroll offset a function of the row alone; a minimal scroll would
        depend on where earlier (possibly still pending) scrolls left the view.
        """
        row = self._row_of.get(self.cursor)
        if row is not None:
            # computed here rather than by scroll_to_region, which does nothing while the scrollbars
            # still reflect an older, shorter history (`e` from the start at 80x24)
            h = self.scrollable_content_region.height or self.size.height
            y = max(0, min(row - h // 2, len(self._rows) - h))
            self.scroll_to(y=y, animate=False, immediate=True, force=True)

    def watch_hit(self) -> None:
        self.refresh()

    def on_resize(self) -> None:
        self.refresh()

    def _rebuild(self) -> None:
        s = self.session
        self._rows, self._row_of = [], {}
        if s is None:
            self.virtual_size = Size(0, 0)
            self.refresh()
            return
        self._bps = op_breakpoints(s)
        last_group = None
        groups: dict[tuple[int, str], Any] = {}
        for rec in s.history:   # the last op of a group is its output
            groups[group_of(rec)] = rec
        for rec in s.history:
            g = group_of(rec)
            if g != last_group:
                if last_group is None or g[0] != last_group[0]:
                    self._rows.append(("pass", (g[0], rec)))
                self._rows.append(("head", (g[1], groups[g])))
                last_group = g
            self._row_of[rec.index] = len(self._rows)
            self._rows.append(("op", rec.index))
        self.virtual_size = Size(0, len(self._rows))   # rows are fitted to the width: no x-scroll
        self.refresh()

    def row_of(self, index: int) -> int | None:
        """The row (0-based, in content lines) that shows history op `index`."""
        return self._row_of.get(index)

    # -- drawing -----------------------------------------------------------------------------
    def _op_text(self, index: int) -> Text:
        rec = self.session.history[index]
        wide = self.size.width >= 2 + NAME_W + 1 + KIND_W + 10
        t = Text(no_wrap=True)
        t.append("▶" if index == self.cursor else " ", style="bold")
        bp = self._bps.get(rec.name)
        t.append("●" if bp else ("○" if bp is False else " "), style="bold red" if bp else "red")
        name = rec.name if len(rec.name) <= NAME_W else rec.name[: NAME_W - 1] + "…"
        t.append(f"{name:<{NAME_W}} ")
        if wide:
            t.append(f"{rec.kind[:KIND_W]:<{KIND_W}}", style="dim")
        pair = rec.pair
        if pair.get("n_nonfinite"):
            t.append(" NaN/Inf", style=NONFINITE)
        else:
            rel = pair.get("rel_rms")
            col = heat_color(rel)
            t.append(f"{pct(rel):>7} ", style=col)
            t.append(("██" if wide else "█") if rel is not None else "", style=col)
        return t

    def _line(self, row: int) -> tuple[Text, Style | None]:
        kind, data = self._rows[row]
        if kind == "op":
            style = None
            if data == self.cursor:
                style = self.get_component_rich_style("timeline--cursor")
            elif data == self.hit:
                style = self.get_component_rich_style("timeline--hit")
            return self._op_text(data), style
        if kind == "pass":
            step, rec = data
            what = "prompt" if step == 0 else f"decode, token {rec.positions[0] if rec.positions else '?'}"
            return Text(f"━━ pass {step}: {what} ", no_wrap=True), self.get_component_rich_style("timeline--heading")
        title, last = data
        rel = last.pair.get("rel_rms")
        t = Text(no_wrap=True)
        t.append(f"─ {title} ", style=self.get_component_rich_style("timeline--heading"))
        t.append(f"out {pct(rel)}", style=heat_color(rel))
        return t, None

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        row = scroll_y + y
        width = self.size.width
        base = self.rich_style
        if self.session is None or row >= len(self._rows):
            return Strip.blank(width, base)
        text, style = self._line(row)
        text.stylize_before(base)
        fill = base
        if style is not None:
            text.stylize(style)
            fill = base + style
        strip = Strip(text.render(self.app.console), text.cell_len)
        return strip.crop_extend(scroll_x, scroll_x + width, fill)

    # -- mouse -------------------------------------------------------------------------------
    def on_click(self, event: events.Click) -> None:
        off = event.get_content_offset(self)
        if off is None:
            return
        row = off.y + self.scroll_offset.y
        if 0 <= row < len(self._rows) and self._rows[row][0] == "op":
            event.stop()
            self.post_message(OpClicked(self._rows[row][1]))
