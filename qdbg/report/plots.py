"""The report's images: rel_rms along the layers (A~B, A~R, B~R and noise) and the top-k logits of
each side, as PNG files written beside the Markdown.

The series are built from a trace without matplotlib (`layer_series`, `topk_bars`); drawing needs
the optional extra `qdbg[plots]`. matplotlib is imported only when drawing, through its
object-oriented API on the Agg canvas (no pyplot: no global state, safe in the TUI's worker
thread). A PNG is the same bytes for the same data and matplotlib version: no timestamp, no
software tag.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdbg.records import Record
from qdbg.report.tables import is_residual
from qdbg.trace import Trace
from qdbg.util import save_file

INSTALL = "pip install 'qdbg[plots]'"
PAIR_STYLE = {"A~B": ("tab:red", "-"), "A~R": ("tab:blue", "--"), "B~R": ("tab:green", "--"),
              "noise": ("0.45", ":")}
SIDE_COLOR = {"A": "tab:red", "B": "tab:blue", "R": "0.35"}


def available() -> bool:
    """Whether matplotlib can be imported (the `plots` extra is installed)."""
    return importlib.util.find_spec("matplotlib") is not None


def image_paths(md_path: str | os.PathLike) -> dict[str, Path]:
    """Where the images of a report written to `md_path` go: FILE-layers.png and FILE-logits.png
    beside it (FILE is the name without its .md suffix)."""
    p = Path(md_path)
    stem = p.name[:-3] if p.name.lower().endswith(".md") else p.name
    return {"layers": p.with_name(f"{stem}-layers.png"), "logits": p.with_name(f"{stem}-logits.png")}


# ---- data -----------------------------------------------------------------------------------

@dataclass
class LayerSeries:
    """rel_rms per residual-stream op of one pass (x labels: embd, 0..n-1, norm, logits); `faint`
    holds A~B of the other passes."""

    title: str
    labels: list[str]
    lines: dict[str, list[float | None]] = field(default_factory=dict)
    faint: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class TopKBars:
    """The logits of the tokens in any side's top-k at one position; None where a token is not in
    that side's top-k (the trace keeps only the top-k)."""

    title: str
    tokens: list[str]
    logits: dict[str, list[float | None]] = field(default_factory=dict)


def _val(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _xlabel(r: Record) -> str:
    return {"inp_embd": "embd", "result_norm": "norm", "result_output": "logits"}.get(r.name, str(r.layer))


def layer_series(tr: Trace, step: int) -> LayerSeries | None:
    """The residual stream of pass `step`: rel_rms of each pair, and the noise (rel_rms of A to a
    rounding-only shadow, when recorded); None when the pass measured nothing."""
    recs = [r for r in tr.records if r.step == step and is_residual(r) and r.pairs]
    if not recs:
        return None
    s = LayerSeries(f"rel_rms along the layers, pass {step}", [_xlabel(r) for r in recs])
    for key in ("A~B", "A~R", "B~R"):
        if any(key in r.pairs for r in recs):
            s.lines[key] = [_val((r.pairs.get(key) or {}).get("rel_rms")) for r in recs]
    noise = [_val((r.pairs.get("A~B") or {}).get("noise")) for r in recs]
    if any(v is not None for v in noise):
        s.lines["noise"] = noise
    for other in sorted({r.step for r in tr.records} - {step}):
        by = {r.name: r for r in tr.records if r.step == other and is_residual(r) and "A~B" in r.pairs}
        if by:
            s.faint[f"A~B pass {other}"] = [_val(by[r.name].pairs["A~B"].get("rel_rms")) if r.name in by else None
                                            for r in recs]
    return s


def _label(t: dict) -> str:
    """A token as plot text: «piece» id, with mathtext's $ and control characters escaped."""
    p = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                for c in str(t.get("piece") or ""))
    return f"«{p}» {t.get('id')}".replace("$", r"\$")


def topk_bars(tr: Trace, rec: Record, i: int) -> TopKBars | None:
    """A's, B's (and R's) top-k at row `i` of `rec`'s logits, over the union of their tokens."""
    lg = rec.logits or {}
    ab = lg.get("A~B")
    if not ab or i >= len(ab.positions):
        return None
    p = ab.positions[i]
    sides = {"A": p.a.top, "B": p.b.top}
    if "A~R" in lg and i < len(lg["A~R"].positions):
        sides["R"] = lg["A~R"].positions[i].b.top
    order: dict[int, dict] = {}
    for top in sides.values():
        for t in top:
            order.setdefault(t["id"], t)
    if not order:
        return None
    bars = TopKBars(f"top-{tr.top_k} logits at position {p.pos} (pass {rec.step})",
                    [_label(t) for t in order.values()])
    for lab, top in sides.items():
        have = {t["id"]: _val(t.get("logit")) for t in top}
        bars.logits[lab] = [have.get(tid) for tid in order]
    return bars


# ---- drawing --------------------------------------------------------------------------------

def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a glyph missing from the font is drawn as a box
        save_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}))


def draw_layers(s: LayerSeries, path: Path) -> None:
    """Line plot of the series (log y when every value is positive) to `path`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.28 * len(s.labels) + 2), 4.2))
    ax = fig.add_subplot()
    x = list(range(len(s.labels)))
    vals = [v for ys in (*s.lines.values(), *s.faint.values()) for v in ys if v is not None]
    log = bool(vals) and min(vals) > 0

    def ys(v: list[float | None]) -> list[float]:
        return [math.nan if y is None or (log and y <= 0) else y for y in v]

    for name, v in s.faint.items():
        ax.plot(x, ys(v), color="tab:red", alpha=0.18, linewidth=1)
    for name, v in s.lines.items():
        color, style = PAIR_STYLE[name]
        ax.plot(x, ys(v), color=color, linestyle=style, marker="o", markersize=3, linewidth=1.6, label=name)
    if s.faint:
        ax.plot([], [], color="tab:red", alpha=0.3, label="A~B, other passes")
    if log:
        ax.set_yscale("log")
    ax.set_xticks(x, s.labels, rotation=90 if len(x) > 20 else 0, fontsize=8)
    ax.set_xlabel("layer output")
    ax.set_ylabel("rel_rms  ||x − y|| / ||y||")
    ax.set_title(s.title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def draw_logits(b: TopKBars, path: Path) -> None:
    """Horizontal bars of each side's logit per token (a missing bar: not in that side's top-k)."""
    from matplotlib.figure import Figure

    n, sides = len(b.tokens), list(b.logits)
    fig = Figure(figsize=(7.5, 0.32 * n * len(sides) / 2 + 1.6))
    ax = fig.add_subplot()
    h = 0.8 / len(sides)
    vals = [v for ys in b.logits.values() for v in ys if v is not None]
    lo = min(vals) - 0.05 * (max(vals) - min(vals) + 1e-9) if vals else 0.0
    for j, lab in enumerate(sides):
        ys = [i + (j - (len(sides) - 1) / 2) * h for i in range(n)]
        w = [0.0 if v is None else v - lo for v in b.logits[lab]]
        ax.barh(ys, w, height=h, left=lo, color=SIDE_COLOR.get(lab, "0.5"), label=lab)
    ax.set_yticks(range(n), b.tokens, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("logit (no bar: not in that side's top-k)")
    ax.set_title(b.title)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
