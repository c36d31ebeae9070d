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


class Timeline(ScrollView, can_focus=True, inherit_bindings=False):
    """The op timeline: set `session`, then bump `revision` when history or the breakpoints change
    (rows are appended when history only grew), call `reload()` when metrics changed in place (the
    scope), and set `cursor` when the session cursor moves."""

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
        # ("pass", (step, first rec)) | ("head", (title, group key)) | ("op", history index)
        self._rows: list[tuple[str, Any]] = []
        self._row_of: dict[int, int] = {}
        self._group_last: dict[tuple[int, str], Any] = {}   # group -> its last op so far (its output)
        self._last_group: tuple[int, str] | None = None
        self._n = 0                 # history records laid out in rows
        self._tail: Any = None      # the last of them
        self._basis: tuple = ()     # what the rows were built under: (scope, breakpoint marks)
        self._bp_exprs: dict[str, bool] = {}
        # row -> (what it looks like, the Strip): scrolling by a row redraws every visible line,
        # which then costs a lookup each instead of building and rendering Text
        self._strips: dict[int, tuple[tuple, Strip]] = {}

    # -- state -> rows ---------------------------------------------------------------------
    def watch_revision(self) -> None:
        self._rebuild()

    def reload(self) -> None:
        """Lay every row out again (metrics may have changed in place, e.g. with the scope)."""
        self._n = 0
        self._rebuild()

    def watch_cursor(self) -> None:
        # now, so the frame that shows the new cursor is already scrolled; and again after the
        # refresh, in case the view's size changed meanwhile
        self.scroll_to_cursor()
        self.call_after_refresh(self._rescroll)
        self.refresh()

    def _rescroll(self) -> None:
        self.scroll_to_cursor()
        # a scrollbar that appeared with this history missed the scroll made before it existed
        if self.show_vertical_scrollbar and self.vertical_scrollbar.position != self.scroll_offset.y:
            self.vertical_scrollbar.position = self.scroll_offset.y

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
        self._strips.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()   # a theme or class change restyles every line

    def _rebuild(self) -> None:
        """Rows for the history: the new records appended when history only grew since the last
        time (same scope, same breakpoint marks), else all of them again."""
        s = self.session
        if s is None:
            self._rows, self._row_of, self._n = [], {}, 0
            self._strips.clear()
            self.virtual_size = Size(0, 0)
            self.refresh()
            return
        h = s.history
        bp_exprs: dict[str, bool] = {}
        for bp in s.breakpoints:
            bp_exprs[bp.expr] = bp_exprs.get(bp.expr, False) or bp.enabled
        basis = (str(s.scope), tuple(sorted(bp_exprs.items())))
        grown = basis == self._basis and 0 < self._n <= len(h) and h[self._n - 1] is self._tail
        if not grown:
            self._rows, self._row_of, self._group_last = [], {}, {}
            self._last_group, self._n = None, 0
            self._strips.clear()
        self._basis, self._bp_exprs = basis, bp_exprs
        for rec in h[self._n:]:   # the last op of a group is its output
            g = group_of(rec)
            self._group_last[g] = rec
            if g != self._last_group:
                if self._last_group is None or g[0] != self._last_group[0]:
                    self._rows.append(("pass", (g[0], rec)))
                self._rows.append(("head", (g[1], g)))
                self._last_group = g
            self._row_of[rec.index] = len(self._rows)
            self._rows.append(("op", rec.index))
        self._n = len(h)
        self._tail = h[-1] if h else None
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
        bp = self._bp_exprs.get(op_expr(rec.name))
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
        title, g = data
        rel = self._group_last[g].pair.get("rel_rms")
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
        kind, data = self._rows[row]
        if kind == "op":
            look: tuple = (data == self.cursor, data == self.hit, width, scroll_x)
        elif kind == "head":   # its 'out' figure is the group's last op so far
            look = (self._group_last[data[1]].index, width, scroll_x)
        else:
            look = (width, scroll_x)
        cached = self._strips.get(row)
        if cached is not None and cached[0] == look:
            return cached[1]
        text, style = self._line(row)
        text.stylize_before(base)
        fill = base
        if style is not None:
            text.stylize(style)
            fill = base + style
        strip = Strip(text.render(self.app.console), text.cell_len).crop_extend(scroll_x, scroll_x + width, fill)
        self._strips[row] = (look, strip)
        return strip

    # -- mouse -------------------------------------------------------------------------------
    def on_click(self, event: events.Click) -> None:
        off = event.get_content_offset(self)
        if off is None:
            return
        row = off.y + self.scroll_offset.y
        if 0 <= row < len(self._rows) and self._rows[row][0] == "op":
            event.stop()
            self.post_message(OpClicked(self._rows[row][1]))
