"""Formatting helpers shared by the TUI panes: numbers, the divergence heat scale, sparklines, pieces.

Pure functions from values to strings and rich Text; nothing here knows about widgets. Every
function accepts None, NaN and +-Inf and shows them rather than raising.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from rich.text import Text

from qdbg.expr import quote

BARS = "▁▂▃▄▅▆▇█"
HEAT_LO, HEAT_HI = -3.0, 0.0
"""log10(rel_rms) at the cool end (0.1%) and the hot end (100%) of the heat scale."""
HEAT_STOPS = ((0.0, (46, 160, 87)), (0.33, (215, 215, 0)), (0.67, (255, 95, 0)), (1.0, (215, 0, 95)))
NONFINITE = "bold white on magenta"


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x: Any, fmt: str = ".4g") -> str:
    """A number for a table cell: '—' for None, 'nan', 'inf', '-inf' as such."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x).lower()
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, fmt)


def fit_num(x: Any, width: int) -> str:
    """`num(x)` with as many significant digits (4 down to 1) as fit in `width` cells, then in a
    compact exponent form ('-1.2e-5', '-1e-5'), so a number is never cut ('-0.00…')."""
    for fmt in (".4g", ".3g", ".2g", ".1g"):
        t = num(x, fmt)
        if len(t) <= width:
            return t
    if not finite(x):
        return t
    for digits in (2, 1, 0):
        m, _, e = format(float(x), f".{digits}e").partition("e")
        t = f"{m}e{int(e)}"
        if len(t) <= width:
            return t
    return t


def pct(x: Any, digits: int = 1) -> str:
    """A ratio as a percentage, e.g. 0.0345 -> '3.5%'."""
    if not finite(x):
        return num(x)
    return f"{100.0 * float(x):.{digits}f}%"


def pct_diff(a: Any, b: Any, width: int = 8) -> str:
    """(a - b) / |b| as a signed percentage in at most `width` cells ('+12.5%', '+4123%',
    '+4e5%'); '—' when either side is absent or b is zero."""
    if not (finite(a) and finite(b)):
        return "—" if a is None or b is None else "nan"
    if b == 0:
        return "0.0%" if a == 0 else "—"
    d = 100.0 * (a - b) / abs(b)
    for t in (f"{d:+.1f}%", f"{d:+.0f}%"):
        if len(t) <= width:
            return t
    m, _, e = format(d, "+.0e").partition("e")
    return f"{m}e{int(e)}%"


def heat(rel_rms: Any) -> float | None:
    """Position of rel_rms on the heat scale, 0 (cool) .. 1 (hot); None when absent or NaN."""
    if rel_rms is None or (isinstance(rel_rms, float) and math.isnan(rel_rms)):
        return None
    r = float(rel_rms)
    if r <= 0:
        return 0.0
    if math.isinf(r):
        return 1.0
    return min(1.0, max(0.0, (math.log10(r) - HEAT_LO) / (HEAT_HI - HEAT_LO)))


def heat_color(rel_rms: Any) -> str:
    """A hex color for rel_rms on the heat scale (grey when absent)."""
    h = heat(rel_rms)
    if h is None:
        return "#808080"
    for (h0, c0), (h1, c1) in zip(HEAT_STOPS, HEAT_STOPS[1:]):
        if h <= h1:
            t = 0.0 if h1 == h0 else (h - h0) / (h1 - h0)
            r, g, b = (round(u + t * (v - u)) for u, v in zip(c0, c1))
            return f"#{r:02x}{g:02x}{b:02x}"
    return "#%02x%02x%02x" % HEAT_STOPS[-1][1]


def downsample(values: Sequence[float], width: int) -> np.ndarray:
    """Max-pool `values` into at most `width` slots (NaN where a slot has only NaN)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if width <= 0 or v.size <= width:
        return v
    edges = np.linspace(0, v.size, width + 1).astype(int)  # [width + 1] slot boundaries
    out = np.full(width, np.nan)
    for i in range(width):
        seg = v[edges[i]:edges[i + 1]]
        seg = seg[~np.isnan(seg)]
        if seg.size:
            out[i] = np.max(seg)
    return out


def spark(values: Sequence[float], width: int = 0, *, colors: Sequence[float] | None = None,
          log: bool = False) -> Text:
    """A one-line sparkline, scaled min..max (log10 if `log`); NaN slots show '!' on magenta.

    `colors`: rel_rms per slot to color each bar on the heat scale (default: one accent color).
    """
    v = downsample(values, width)
    c = None if colors is None else downsample(colors, width)
    ok = np.isfinite(v) & ((v > 0) if log else True)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(ok, np.log10(np.where(ok, v, 1.0)) if log else v, np.nan)
    fin = s[ok]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 0.0)
    out = Text(no_wrap=True)
    for i, x in enumerate(v):
        if np.isnan(x):
            out.append("!", style=NONFINITE)
        elif np.isinf(x):
            out.append("█" if x > 0 else BARS[0], style="bold magenta")
        elif not ok[i]:
            out.append(BARS[0], style="dim")
        else:
            k = 0 if hi == lo else int(round((s[i] - lo) / (hi - lo) * (len(BARS) - 1)))
            out.append(BARS[k], style=heat_color(c[i]) if c is not None else "cyan")
    return out


def piece_text(piece: Any, limit: int = 12) -> str:
    """A token piece for display: control characters escaped (\\n, \\x03), quoted with ' (or "
    when it holds a '), its inside cut to `limit` characters with '…'."""
    if piece is None:
        return "?"
    if isinstance(piece, (bytes, bytearray)):
        piece = bytes(piece).decode("utf-8", errors="replace")
    inner = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(piece))
    q = '"' if "'" in inner and '"' not in inner else "'"
    if len(inner) > limit:
        inner = inner[: limit - 1] + "…"
    return f"{q}{inner}{q}"


def piece_of(session: Any, tid: int) -> Any:
    """The text of token `tid`: session.pieces (callable, mapping or sequence), else model A's
    tokenizer, else None."""
    pieces = getattr(session, "pieces", None)
    try:
        if pieces is not None:
            return pieces(tid) if callable(pieces) else pieces[tid]
    except (IndexError, KeyError, TypeError, ValueError):
        pass
    try:
        return session.models["A"].tokenizer.piece(tid)
    except Exception:  # a replay or a model without vocabulary: no piece
        return None


def op_expr(name: str) -> str:
    """The condition BreakpointList.add_op(name) sets: `op == "name"`."""
    return f"op == {quote(str(name))}"


def cell(value: str | Text, width: int, align: str = "l") -> Text:
    """`value` cut (with '…') or padded to exactly `width` cells; align 'l' or 'r'."""
    t = value.copy() if isinstance(value, Text) else Text(str(value))
    t.no_wrap = True
    if t.cell_len > width:
        t.truncate(width, overflow="ellipsis")
    pad = " " * max(0, width - t.cell_len)
    return Text(pad) + t if align == "r" else t + Text(pad)


def row(cells: Sequence[str | Text], widths: Sequence[int], aligns: str = "", *, style: str = "",
        gap: int = 1) -> Text:
    """One table line of fixed-width cells (cheaper to render than a rich Table)."""
    out = Text(no_wrap=True, style=style)
    for i, (c, w) in enumerate(zip(cells, widths)):
        if i:
            out.append(" " * gap)
        out.append_text(cell(c, w, aligns[i] if i < len(aligns) else "l"))
    return out


def lines(parts: Sequence[Text]) -> Text:
    """Join lines into one Text."""
    return Text("\n", no_wrap=True).join(parts)
