"""LayerSpark: a one-line sparkline of divergence per layer (the rel_rms of each layer's output)
for the pass under the cursor, bars colored on the heat scale."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from qdbg.tui.fmt import heat_color, pct, spark


def layer_outputs(session: Any, step: int) -> list[tuple[int, Any]]:
    """[(layer, rel_rms of the layer's last op)] for pass `step`, in layer order."""
    last: dict[int, Any] = {}
    for rec in session.history:
        if rec.step == step and rec.layer is not None:
            last[rec.layer] = rec.pair.get("rel_rms")
    return sorted(last.items())


class LayerSpark(Widget):
    """Per-layer divergence (rel_rms of each layer's output) of the current pass; set `session`,
    then bump `revision`."""

    DEFAULT_CSS = """
    LayerSpark {
        height: 2;
        padding: 0 1;
    }
    """

    revision: reactive[int] = reactive(0, always_update=True)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session: Any = None

    def render(self) -> Text:
        s = self.session
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append("layers ", style="bold")
        if s is None or not s.history:
            out.append("—", style="dim")
            return out
        step = s.current.step if s.current is not None else s.history[-1].step
        rows = layer_outputs(s, step)
        if not rows:
            out.append("—", style="dim")
            return out
        vals = [float("nan") if v is None else v for _, v in rows]
        out.append_text(spark(vals, max(4, self.size.width - 8), colors=vals, log=True))
        fin = [(v, lay) for lay, v in rows if v is not None and v == v]
        out.append("\n")
        if fin:
            v, lay = max(fin)
            out.append(f"0..{rows[-1][0]}  worst output ", style="dim")
            out.append(f"{pct(v)}", style=heat_color(v))
            out.append(f" @ {lay}", style="dim")
        return out
