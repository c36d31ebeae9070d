"""Written reports: a session or a loaded trace as the Markdown an engineer would write by hand.

The first page is a summary (qdbg.report.summary): the verdict, where the divergence is born, the
flip, which side is closer to R by KL at the logits, the ops adding the most error, and the plots.
Then the error along the layers in every pass, the per-op tables of the layers the findings name,
and the top-k where the flip is. Everything else is in the appendix: configuration, the findings
in full, each pass's tables and the per-op tables of the first and last pass.

Every finding comes from qdbg.findings. Deterministic: the same session gives the same text, live
or reloaded; no clock is read. NaN/Inf are shown, never fatal. `write_report` also writes the
images (qdbg.report.plots) beside a Markdown file when matplotlib is installed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable

from qdbg.findings import Findings, error_added
from qdbg.report import details, plots as qplots, tables
from qdbg.report.fmt import code, file_name, num, pct, piece
from qdbg.report.summary import N_SUMMARY, focus, logits_record, summary
from qdbg.scope import ALL as SCOPE_ALL
from qdbg.session import Session
from qdbg.trace import Trace, snapshot
from qdbg.util import STDOUT, check_output, write_text

__all__ = ["render_report", "write_report", "num", "pct"]

MAX_MATTER = 4  # (pass, layer) groups shown in full in the body
NO_IMAGES_STDOUT = "the report went to standard output; write it to a file (`-o FILE.md`) to get the images."


def _plots_md(images: dict[str, str] | None, why: str | None) -> list[str]:
    out = ["### Plots", ""]
    if images:
        titles = {"layers": "rel_rms along the layers (A~B, A~R, B~R, noise)", "logits": "top-k logits of A and B"}
        for k, name in images.items():
            out += [f"![{titles[k]}]({name})", ""]
        return out
    return out + [f"No images: {why or NO_IMAGES_STDOUT}", ""]


def _matter(tr: Trace, f: Findings) -> list[tuple[int, str, list[str]]]:
    """(pass, layer-group title, why) of the layers the findings name, in run order, at most MAX_MATTER."""
    why: dict[int, list[str]] = {}
    if f.nonfinite is not None:
        why.setdefault(f.nonfinite.index, []).append("first NaN/Inf")
    for o in f.born.ops[:N_SUMMARY]:
        why.setdefault(o.index, []).append(f"local error {num(o.local, '.3g')} at {code(o.name)}")
    for c in f.crossings:
        if c.key == "A~B" and c.index is not None:
            unit = " dB" if c.metric == "sqnr" else ""
            why.setdefault(c.index, []).append(f"first over {c.metric} {c.op} {c.threshold:g}{unit} at {code(c.name)}")
    for a in f.amplifiers[:N_SUMMARY]:
        why.setdefault(a.index, []).append(f"adds {num(a.added, '+.3g')} at {code(a.name)}")
    by_index = {r.index: r for r in tr.records}
    groups: dict[tuple[int, str], tuple[int, list[str]]] = {}
    for i, reasons in why.items():  # priority order: NaN, born, crossings, error added
        r = by_index[i]
        title = next(t for t, rs in tables.layer_groups([x for x in tr.records if x.step == r.step]) if r in rs)
        first, acc = groups.get((r.step, title), (i, []))
        if (r.step, title) in groups or len(groups) < MAX_MATTER:
            groups[(r.step, title)] = (min(first, i), acc + reasons)
    return [(s, t, w) for (s, t), (_, w) in sorted(groups.items(), key=lambda kv: kv[1][0])]


def _body(tr: Trace, f: Findings) -> list[str]:
    steps = sorted({r.step for r in tr.records})
    out = ["## Error through the layers", "", "rel_rms A~B along the residual stream, by pass "
           "(per-pass tables with SQNR, cosine and R in the appendix):", ""] + tables.across_passes(tr, steps)
    matter = _matter(tr, f)
    if matter:
        out += ["## Layers that matter", ""]
        for s, title, why in matter:
            rs = next(rs for t, rs in tables.layer_groups([r for r in tr.records if r.step == s]) if t == title)
            out += [f"### {title}, pass {s}", "", "Why: " + "; ".join(dict.fromkeys(why)) + ".", ""]
            out += tables.group_full(tr, rs)
    fl = focus(f)
    rec = None if fl is None else logits_record(tr, fl.step)
    if fl is not None and rec is not None:
        at = next(i for i, p in enumerate(rec.logits["A~B"].positions) if p.pos == fl.pos)
        what = "the flip" if fl.flip else "the last pass"
        out += tables.topk(tr, rec, f"## Top-k at {what}: pass {fl.step}, position {fl.pos}", at)
    return out


def _appendix(tr: Trace, f: Findings, max_detail_passes: int) -> list[str]:
    out = ["## Appendix", ""] + tables.config(tr)
    out += ["### Findings in full", ""] + details.nonfinite(f) + details.flip_lines(tr, f) + details.closer_to_r(f)
    out += details.born(f) + details.crossings(tr, f) + details.amplifiers(f)
    flagged, added = f.flagged(), error_added(tr.records)
    steps = sorted({r.step for r in tr.records})
    detail = set([steps[0], steps[-1]][:max(0, max_detail_passes)])
    for s in steps:
        recs = [r for r in tr.records if r.step == s]
        pos = recs[0].positions
        what = "prompt" if s == 0 else f"decode of {piece(tr.pieces.get(tr.tokens[pos[0]]) if pos else None)}"
        span = f"position {pos[0]}" if len(pos) == 1 else f"positions {pos[0]}–{pos[-1]}" if pos else "no positions"
        out += [f"### Pass {s}: {what}, {span}", ""]
        measured = [r for r in recs if r.stats]
        if not measured:
            out += [f"No metrics: position {tr.scope} is not in this pass.", ""]
            continue
        mpos = sorted({p for r in measured for p in ([tables.abs_pos(tr, r, 0)] if tr.scope != SCOPE_ALL
                                                     else r.positions) if p is not None})
        out += [f"Metrics at position{'s' if len(mpos) > 1 else ''} "
                + (f"{mpos[0]}–{mpos[-1]}" if len(mpos) > 1 else str(mpos[0] if mpos else "—")) + ".", ""]
        out += tables.accumulation(tr, recs)
        logit_rec = next((r for r in recs if r.logits), None)
        if logit_rec is not None:
            out += tables.topk(tr, logit_rec)
        if s in detail:
            out += ["#### Ops by layer", ""] + tables.layer_tables(tr, recs, flagged, added, "#####")
        else:
            out += ["(Per-op tables omitted for this pass.)", ""]
    return out


def render_report(obj: Trace | Session, *, max_detail_passes: int = 2, images: dict[str, str] | None = None,
                  no_images: str | None = None) -> str:
    """Markdown report of a Trace or a Session (live or replay). `images` maps 'layers'/'logits'
    to the file names the Markdown links to (written by `write_report`); without them the plots
    section says why (`no_images`, default: the report went to standard output). Per-op tables
    in the appendix cover the first and the last pass (at most `max_detail_passes`)."""
    tr = obj if isinstance(obj, Trace) else snapshot(obj)
    a, b = (file_name(tr.models[k].path) for k in ("A", "B"))
    out = [f"# qdbg report: A = {a} vs B = {b}", ""]
    if not tr.records:
        return "\n".join(out + tables.config(tr) + ["No ops recorded yet.", ""])
    f = Findings.of(tr.records)
    out += summary(tr, f, _plots_md(images, no_images)) + _body(tr, f) + _appendix(tr, f, max_detail_passes)
    return "\n".join(out).rstrip("\n") + "\n"


def _draw(tr: Trace, f: Findings, md: Path, on_image: Callable[[Path], None] | None) -> dict[str, str]:
    """Draw the images beside `md`; file name -> relative link, in report order."""
    paths = qplots.image_paths(md)
    fl = focus(f)
    step = fl.step if fl is not None else max(r.step for r in tr.records)
    out: dict[str, str] = {}
    series = qplots.layer_series(tr, step)
    if series is not None:
        qplots.draw_layers(series, paths["layers"])
        out["layers"] = paths["layers"].name
    rec = None if fl is None else logits_record(tr, fl.step)
    if rec is not None:
        at = next(i for i, p in enumerate(rec.logits["A~B"].positions) if p.pos == fl.pos)
        bars = qplots.topk_bars(tr, rec, at)
        if bars is not None:
            qplots.draw_logits(bars, paths["logits"])
            out["logits"] = paths["logits"].name
    for k in out:
        if on_image is not None:
            on_image(paths[k])
    return out


def write_report(obj: Trace | Session, path: str | os.PathLike, *, plots: bool = True,
                 on_image: Callable[[Path], None] | None = None, **kw: Any) -> Path:
    """The report saved to `path` by qdbg.util.write_text ('-' is standard output). Into a regular
    file (or a new one) with `plots` and matplotlib installed, the images go first, beside the file
    a symlink points to (FILE-layers.png, FILE-logits.png), each reported to `on_image`; otherwise
    the report says why there are none."""
    tr = obj if isinstance(obj, Trace) else snapshot(obj)
    images, why = None, None
    if str(path) != STDOUT:
        check_output(path, text=True)
        try:
            st: os.stat_result | None = os.stat(path)
        except OSError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            why = "the output is not a regular file, so there is no folder to put them beside it."
        elif not plots:
            why = "not asked for."
        elif not qplots.available() or not tr.records:
            why = (f"matplotlib is not installed: `{qplots.INSTALL}`, then write the report again."
                   if tr.records else "no ops recorded yet.")
        else:
            md = Path(path).resolve() if Path(path).is_symlink() else Path(path)  # beside the file a link names
            images = _draw(tr, Findings.of(tr.records), md, on_image) or None
            why = None if images else "nothing to plot (no layer outputs or logits recorded)."
    write_text(path, render_report(tr, images=images, no_images=why, **kw))
    return Path(path)
