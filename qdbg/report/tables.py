"""Written reports: a session or a loaded trace as the Markdown an engineer would write by hand.

Sections: configuration; per pass an error-accumulation table over the layers, per-layer op tables
(A beside B, and R when present) and the final top-k comparison; findings computed from the data
(first threshold crossings, largest amplifiers, NaN/Inf, top-1 flips against the logit error,
which side stays closer to R). Deterministic: the same session gives the same text, live or
reloaded; no clock is read. NaN/Inf are shown, never fatal.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from qdbg.findings import NEAR_TIE_SIGMAS, THRESHOLDS, Findings
from qdbg.records import Record
from qdbg.scope import ALL as SCOPE_ALL, LAST as SCOPE_LAST, Scope
from qdbg.session import Session
from qdbg.trace import Trace, snapshot
from qdbg.util import write_text

N_FIRST = 4          # leading values shown per op
COLLAPSE_LAYERS = 10  # more layer groups than this: each in a <details> block


# ---- formatting ------------------------------------------------------------------------------

def num(x: Any, fmt: str = ".4g") -> str:
    """A number for a table cell: None as '—', NaN/Inf spelled out, bools as yes/no."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not isinstance(x, (int, float)):
        return _txt(str(x))
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if x != x else ("inf" if x > 0 else "-inf")
    return format(x, fmt) if isinstance(x, float) or "g" not in fmt else str(x)


def pct(a: Any, b: Any) -> str:
    """(a - b) / |b| in percent, signed."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
        return "—"
    if not (math.isfinite(a) and math.isfinite(b)):
        return "NaN"
    if a == b:
        return "+0.00%"
    return ("+inf" if a > b else "-inf") if b == 0 else f"{100.0 * (a - b) / abs(b):+.2f}%"


def _txt(s: str) -> str:
    """Token text safe in a table cell: control characters escaped, Markdown specials backslashed."""
    out = []
    for i, c in enumerate(s):
        if c == "_" and 0 < i < len(s) - 1 and s[i - 1].isalnum() and s[i + 1].isalnum():
            out.append(c)  # intraword: never emphasis in GFM
        elif c in "\\`*_[]<>|#":
            out.append("\\" + c)
        elif ord(c) < 32 or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029":
            out.append(json.dumps(c)[1:-1] if c in "\n\r\t" else f"\\\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def _code(s: str) -> str:
    """`s` as a code span that cannot break a table row."""
    s = "".join(" " if ord(c) < 32 or c in "\u2028\u2029" else c for c in str(s)).replace("|", "\\|")
    fence = "``" if "`" in s else "`"
    pad = " " if "`" in s else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _piece(p: Any) -> str:
    return "—" if p is None else f"«{_txt(str(p))}»"


def table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _get(rec: Record, key: str, metric: str) -> Any:
    return (rec.pairs.get(key) or {}).get(metric)


# ---- sections --------------------------------------------------------------------------------

def _abs_pos(tr: Trace, rec: Record, p: int) -> int | None:
    """Absolute token position of row p of a scoped logits comparison."""
    return Scope.parse(tr.scope).absolute(rec.positions, p)


def _config(tr: Trace) -> list[str]:
    out = ["## Configuration", ""]
    rows = []
    for lab in tr.labels:
        mi = tr.models[lab]
        size = "—" if mi.size is None else f"{mi.size / (1 << 20):.2f} MiB"
        sha = "—" if not mi.sha256 else f"`{mi.sha256[:16]}…`"
        rows.append([lab, _txt(mi.path.replace(chr(92), '/').rsplit('/', 1)[-1]), _txt(mi.name), size, sha,
                     _txt(mi.type_summary())])
    out += table(["side", "file", "name", "size", "sha256", "quant mix"], rows)
    c = tr.models["A"].config
    out.append(f"- Architecture: {_txt(c.arch)}, {c.n_layer} layers, n_embd {c.n_embd}, n_head {c.n_head} "
               f"(kv {c.n_head_kv}), head_dim {c.head_dim}, n_ff {c.n_ff}, n_vocab {c.n_vocab}, "
               f"context {c.n_ctx_train}, rope {_txt(c.rope_type)}, ffn {_txt(c.ffn_act)}")
    scope = {SCOPE_LAST: "last (the last position of each pass)", SCOPE_ALL: "all positions"}.get(
        tr.scope, f"position {tr.scope}")  # type: ignore[call-overload]
    prof = (tr.numerics or {}).get("profile") or {}
    settings = (tr.numerics or {}).get("settings") or {}
    out.append(f"- Mode: {_txt(tr.mode)}; scope: {scope}; top-k: {tr.top_k}")
    if prof:
        out.append(f"- Numerics: reproduces {_txt(prof.get('description', prof.get('id', '')))}, bit for bit"
                   + (f" (micro-batch {settings.get('n_ubatch')}, context {settings.get('n_ctx')}, flash "
                      f"attention {'on' if settings.get('flash_attn') else 'off'}, {settings.get('n_threads')} "
                      f"thread(s))" if settings else ""))
    out.append("- Sides: A and B are the quantizations compared (B is the denominator of every ratio)"
               + ("; R is the reference." if "R" in tr.labels else "."))
    if tr.prompt_text is not None:
        out.append(f"- Prompt: «{_txt(tr.prompt_text)}»")
    n_dec = len(tr.tokens) - len(tr.prompt)
    out.append(f"- Tokens: {len(tr.tokens)} ({len(tr.prompt)} prompt"
               + (f", {n_dec} decoded, driver {tr.driver})" if n_dec else ")"))
    bps = tr.breakpoints.get("breakpoints", [])
    out.append("- Breakpoints: " + ("; ".join(
        f"#{b['id']} {_code(b['expr'])}" + ("" if b["enabled"] else " (disabled)") + f" hits {b['hits']}"
        for b in bps) if bps else "none"))
    cur = tr.records[tr.cursor] if 0 <= tr.cursor < len(tr.records) else None
    out.append(f"- History: {len(tr.records)} ops over {len({r.step for r in tr.records})} pass(es); cursor "
               + (f"at op {cur.index} {_code(cur.name)} (pass {cur.step})" if cur else "before the first op"))
    out.append("")
    rows = [[str(i), str(t), _piece(tr.pieces.get(t)), "prompt" if i < len(tr.prompt) else "decoded"]
            for i, t in enumerate(tr.tokens)]
    if len(rows) <= 32:
        out += table(["pos", "id", "piece", "from"], rows)
    else:
        out += [" ".join(f"{r[0]}:{r[1]}{r[2]}" for r in rows), ""]
    return out


def _accumulation(tr: Trace, recs: list[Record]) -> list[str]:
    keys = [k for k in ("A~B", "A~R", "B~R") if any(k in r.pairs for r in recs)]
    sel = [r for r in recs if r.name in ("inp_embd", "result_norm", "result_output")
           or (r.layer is not None and r.name == f"l_out-{r.layer}")]
    head = ["layer", "op"]
    for k in keys:
        head += [f"rel_rms {k}", f"SQNR {k} dB", f"cos {k}"]
    head.append("growth A~B")
    if "A~R" in keys and "B~R" in keys:
        head.append("closer to R")
    rows, prev = [], None
    for r in sel:
        row = ["—" if r.layer is None else str(r.layer), f"{_code(r.name)}"]
        for k in keys:
            row += [num(_get(r, k, "rel_rms")), num(_get(r, k, "sqnr"), ".1f"), num(_get(r, k, "cos"), ".6f")]
        cur = _get(r, "A~B", "rel_rms")
        ok = isinstance(cur, float) and isinstance(prev, float) and prev > 0 and math.isfinite(prev)
        row.append(f"×{num(cur / prev, '.3g')}" if ok else "—")
        prev = cur
        if "A~R" in keys and "B~R" in keys:
            row.append(_closer(_get(r, "A~R", "rel_rms"), _get(r, "B~R", "rel_rms")))
        rows.append(row)
    if not rows:
        return ["(no layer outputs recorded in this pass)", ""]
    return ["#### Error accumulation (residual stream)", ""] + table(head, rows)


def _closer(a: Any, b: Any) -> str:
    if not all(isinstance(v, float) and v == v for v in (a, b)):
        return "—"
    return "tie" if a == b else ("A" if a < b else "B")


def _layer_tables(tr: Trace, recs: list[Record], flagged: set[int]) -> list[str]:
    """Per-layer op tables; with more than COLLAPSE_LAYERS groups each one is a <details> block,
    open when it holds an op named in the findings."""
    groups: list[tuple[str, list[Record]]] = []
    for r in recs:
        title = f"Layer {r.layer}" if r.layer is not None else ("Output" if groups and any(
            g[1][0].layer is not None for g in groups) else "Embedding")
        if not groups or groups[-1][0] != title:
            groups.append((title, []))
        groups[-1][1].append(r)
    out: list[str] = []
    for title, rs in groups:
        if len(groups) <= COLLAPSE_LAYERS:
            out += [f"#### {title}", ""] + _group(tr, rs)
            continue
        worst = max(rs, key=lambda r: v if isinstance(v := _get(r, "A~B", "rel_rms"), float) and v == v else -1.0)
        summ = f"{title}: {len(rs)} ops, largest rel_rms A~B {num(_get(worst, 'A~B', 'rel_rms'))} at {worst.name}"
        opened = " open" if any(r.index in flagged for r in rs) else ""
        out += [f"<details{opened}><summary>{html.escape(summ)}</summary>", ""] + _group(tr, rs) + ["</details>", ""]
    return out


def _group(tr: Trace, rs: list[Record]) -> list[str]:
    """One layer's ops: a values table (A beside B, Δ in percent, R), a divergence table and
    the first values."""
    hasr = "R" in tr.labels
    out: list[str] = []
    vh = ["op", "W " + "/".join(tr.labels), "rms A", "rms B", "Δ", "min A", "min B", "Δ", "max A", "max B", "Δ"]
    dh = ["op", "rel_rms", "SQNR dB", "cos", "max_abs", "max_rel", "amp", "sign flips"]
    if hasr:
        vh += ["rms R", "A vs R", "B vs R"]
        dh += ["rel_rms A~R", "rel_rms B~R"]
    vrows, drows, first = [], [], []
    for r in rs:
        s = {lab: r.stats.get(lab) or {} for lab in tr.labels}
        if not r.stats:
            vrows.append([f"{_code(r.name)}", "(not in scope)"] + [""] * (len(vh) - 2))
            continue
        w = "/".join(str(r.weight_types.get(lab) or "·") for lab in tr.labels) if r.weight else "—"
        row = [f"{_code(r.name)}", _txt(w)]
        for key in ("rms", "min", "max"):
            row += [num(s["A"].get(key)), num(s["B"].get(key)), pct(s["A"].get(key), s["B"].get(key))]
        if hasr:
            row += [num(s["R"].get("rms")), pct(s["A"].get("rms"), s["R"].get("rms")),
                    pct(s["B"].get("rms"), s["R"].get("rms"))]
        vrows.append(row)
        p = r.pairs.get("A~B") or {}
        d = [f"{_code(r.name)}", num(p.get("rel_rms")), num(p.get("sqnr"), ".1f"), num(p.get("cos"), ".6f"),
             num(p.get("max_abs")), num(p.get("max_rel")), num(p.get("amp"), ".3g"), num(p.get("sign_flips"))]
        if hasr:
            d += [num(_get(r, "A~R", "rel_rms")), num(_get(r, "B~R", "rel_rms"))]
        drows.append(d)
        nonfin = {lab: (s[lab].get("nan_count", 0), s[lab].get("inf_count", 0)) for lab in tr.labels}
        fa, fb = s["A"].get("first") or [], s["B"].get("first") or []
        nf = "; ".join(f"{lab}: {n} NaN, {i} Inf" for lab, (n, i) in nonfin.items() if n or i)
        firsts = " · ".join(f"{lab} [{', '.join(num(v) for v in (s[lab].get('first') or [])[:N_FIRST])}]"
                            for lab in tr.labels)
        deltas = ", ".join(pct(a, b) for a, b in zip(fa[:N_FIRST], fb))
        first.append(f"- {_code(r.name)}: {firsts} · Δ A vs B [{deltas}]" + (f" — **{nf}**" if nf else ""))
    out += ["Values (Δ: A relative to B; A/B vs R: relative to R):", ""] + table(vh, vrows)
    if drows:
        out += ["Divergence A vs B" + (" (and each vs R)" if hasr else "") + ":", ""] + table(dh, drows)
    if first:
        out += ["<details><summary>first values</summary>", ""] + first + ["", "</details>", ""]
    return out


def _topk(tr: Trace, rec: Record) -> list[str]:
    lg = rec.logits or {}
    ab = lg.get("A~B")
    if not ab or not ab.get("positions"):
        return []
    out = ["#### Final top-k", ""]
    poss = ab["positions"]
    if len(poss) > 1:
        rows = []
        for i, p in enumerate(poss):
            a1, b1 = (p["a"]["top"] or [{}])[0], (p["b"]["top"] or [{}])[0]
            rows.append([num(_abs_pos(tr, rec, i)), _piece(a1.get("piece")), _piece(b1.get("piece")),
                         num(p.get("flip")), num(p.get("kl_ab")), num(p.get("js")), num(p.get("topk_overlap"), ".2f")])
        out += table(["pos", "A top-1", "B top-1", "flip", "KL(A‖B)", "JS", "overlap"], rows)
        out += [f"Detail at the last position ({num(_abs_pos(tr, rec, len(poss) - 1))}):", ""]
    i = len(poss) - 1
    sides = [("A", poss[i]["a"]), ("B", poss[i]["b"])]
    if "A~R" in lg:
        sides.append(("R", lg["A~R"]["positions"][i]["b"]))
    head, rows = ["#"], []
    for lab, _ in sides:
        head += [f"{lab} id", f"{lab} piece", f"{lab} logit", f"{lab} prob"]
    for k in range(max(len(sd["top"]) for _, sd in sides)):
        row = [str(k + 1)]
        for _, sd in sides:
            t = sd["top"][k] if k < len(sd["top"]) else {}
            row += [num(t.get("id")), _piece(t.get("piece")) if t else "", num(t.get("logit"), ".3f"),
                    num(t.get("prob"), ".4f")]
        rows.append(row)
    out += table(head, rows)
    keys = [k for k in ("A~B", "A~R", "B~R") if k in lg]
    def pair(p: dict, key: str) -> str:
        return f"{num(p['a'].get(key), '.3f')} / {num(p['b'].get(key), '.3f')}"

    mrows = []
    for label, f in (("KL(x‖y) nats", lambda p: num(p.get("kl_ab"))),
                     ("KL(y‖x) nats", lambda p: num(p.get("kl_ba"))),
                     ("JS nats", lambda p: num(p.get("js"))),
                     ("top-k overlap", lambda p: num(p.get("topk_overlap"), ".2f")),
                     ("top-1 agree", lambda p: num(p.get("top1_agree"))),
                     ("rank in y of x's top-1", lambda p: num(p.get("rank_b_of_a_top1"))),
                     ("rank in x of y's top-1", lambda p: num(p.get("rank_a_of_b_top1"))),
                     ("top-2 margin x / y", lambda p: pair(p, "margin")),
                     ("entropy x / y nats", lambda p: pair(p, "entropy"))):
        mrows.append([label] + [f(lg[k]["positions"][i]) for k in keys])
    return out + table(["metric"] + [f"{k.replace('~', ' vs ')} (x={k[0]}, y={k[2]})" for k in keys], mrows)


# ---- findings --------------------------------------------------------------------------------

def _crossings(tr: Trace, f: Findings) -> list[str]:
    keys = list(dict.fromkeys(c.key for c in f.crossings))
    rows = []
    for metric, op, thr in THRESHOLDS:
        row = [f"{metric} {op} {thr:g}" + (" dB" if metric == "sqnr" else "")]
        fmt = ".1f" if metric == "sqnr" else ".4g"
        for c in f.crossings:
            if (c.metric, c.op, c.threshold) == (metric, op, thr):
                row.append("never" if c.name is None else f"{_code(c.name)} (pass {c.step}, {num(c.value, fmt)})")
        rows.append(row)
    return ["### First op over each threshold", ""] + table(["threshold"] + keys, rows)


def _amplifiers(f: Findings) -> list[str]:
    out = ["### Largest amplifiers (A vs B)", ""]
    if not f.amplifiers:
        return out + ["No op amplifies a measurable input error.", ""]
    rows = [[_code(a.name), str(a.step), num(a.amp, ".3g"), num(a.input_rel_rms), num(a.rel_rms)]
            for a in f.amplifiers]
    return out + table(["op", "pass", "amp", "input rel_rms", "output rel_rms"], rows)


def _nonfinite(f: Findings) -> list[str]:
    nf = f.nonfinite
    if nf is None:
        return ["- No NaN or Inf in any recorded op (within the scope).", ""]
    what = "; ".join(f"{lab}: {n} NaN, {i} Inf" for lab, (n, i) in nf.counts.items())
    return [f"- **Non-finite values** first appear at {_code(nf.name)} (pass {nf.step}): {what}.", ""]


VERDICTS = {"near-tie": "**near-tie**: the swing is within 3·√2·rms = {noise} of noise",
            "decisive": "**decisive**: the swing is {sigmas}σ of the noise; the error is concentrated on these tokens",
            "unweighable": "cannot be weighed (non-finite logits)",
            "safe": "margin well above the noise.",
            "fragile": "fragile: margin within 3·√2·rms of the noise."}


def _flip_lines(tr: Trace, f: Findings) -> list[str]:
    out = []
    by_step: dict[int, list] = {}
    for fl in f.flips:
        by_step.setdefault(fl.step, []).append(fl)
    for rec in tr.records:
        ab = (rec.logits or {}).get("A~B")
        if not ab or rec.step not in by_step:
            continue
        shown = by_step.pop(rec.step)
        for j, fl in enumerate(shown):
            where = f"Pass {fl.step}, position {num(fl.pos)}"
            err = f"logit error rms {num(fl.logit_error, '.3g')} (rel_rms {num(rec.pair.rel_rms, '.3g')})"
            margins = f"A's top-2 margin {num(fl.margin_a, '.3g')}, B's {num(fl.margin_b, '.3g')}"
            sig = fl.swing / (fl.noise / NEAR_TIE_SIGMAS) if fl.swing is not None and fl.noise else math.inf
            verdict = VERDICTS[fl.verdict].format(noise=num(fl.noise, ".3g"), sigmas=num(sig, ".3g"))
            if fl.flip:
                out.append(f"- {where}: **top-1 flipped** — A picks {_piece(fl.a_piece)} ({fl.a_id}), "
                           f"B picks {_piece(fl.b_piece)} ({fl.b_id}). {margins}; the gap between the two "
                           f"candidates swings by {num(fl.swing, '.3g')} logits between the sides, against a {err} "
                           f"⇒ {verdict}.")
            else:
                out.append(f"- {where}: no flip — both pick {_piece(fl.a_piece)} ({fl.a_id}). "
                           f"{margins} vs a {err} ⇒ {verdict}")
            if len(ab.positions) > 1 and j == len(shown) - 1 and ab.flip_positions:
                out[-1] += f" ({len(ab.flip_positions)} of {len(ab.positions)} positions flip in this pass.)"
        for k in ("A~R", "B~R"):
            q = (rec.logits or {}).get(k)
            if q and q.positions:
                n = sum(1 for p in q.positions if p.top1_agree)
                out.append(f"  - {k[0]} agrees with R's top-1 at {n} of {len(q.positions)} position(s) "
                           f"(KL({k[0]}‖R) {num(q.positions[-1].kl_ab, '.3g')} at the last).")
    return (["### Top-1 flips", ""] + out + [""]) if out else ["- No logits recorded yet.", ""]


def _closer_to_r(f: Findings) -> list[str]:
    c = f.closer_to_r
    if c is None:
        return []
    out = ["### Closer to R", ""]
    head = (f"{c.best} stays closer to R" if c.best else "Neither side is consistently closer to R") + \
        f": A at {c.n_a} and B at {c.n_b} of {c.n_ops} ops"
    if c.last_layer_output:
        lo, last = c.layer_outputs, c.last_layer_output
        head += (f"; at the layer outputs A at {lo['A']}, B at {lo['B']} of {lo['n']} "
                 f"(last, {_code(last['op'])} pass {last['pass']}: rel_rms A~R {num(last['a_r'])} "
                 f"vs B~R {num(last['b_r'])})")
    if c.kl_r_a is not None or c.kl_r_b is not None:
        head += f"; at the last logits KL(R‖A) {num(c.kl_r_a, '.3g')} vs KL(R‖B) {num(c.kl_r_b, '.3g')}"
    out.append(f"- {head}.")
    if c.best:
        names = c.b_closer_at if c.best == "A" else c.a_closer_at
        other = "B" if c.best == "A" else "A"
        if names:
            n_other = c.n_b if c.best == "A" else c.n_a
            out.append(f"- {other} is closer at: {', '.join(_code_label(n) for n in names)}"
                       + (" …" if n_other > len(names) else "") + ".")
    return out + [""]


def _code_label(label: str) -> str:
    """'name (pass 3)' with the name in code style."""
    name, sep, rest = label.partition(" (")
    return _code(name) + (f" ({rest}" if sep else "")


# ---- assembly --------------------------------------------------------------------------------

def render_report(obj: Trace | Session, *, max_detail_passes: int = 2) -> str:
    """Markdown report of a Trace or a Session (live or replay). Per-op tables are written for the
    first and the last pass (at most `max_detail_passes` passes); every pass gets its
    error-accumulation table and top-k comparison."""
    tr = obj if isinstance(obj, Trace) else snapshot(obj)
    a, b = (_txt(tr.models[k].path.replace("\\", "/").rsplit("/", 1)[-1]) for k in ("A", "B"))
    out = [f"# qdbg report: A = {a} vs B = {b}", ""] + _config(tr)
    if not tr.records:
        return "\n".join(out + ["No ops recorded yet.", ""])
    f = Findings.of(tr.records)
    out += ["## Findings", ""] + _nonfinite(f) + _flip_lines(tr, f) + _closer_to_r(f) + _crossings(tr, f) + _amplifiers(f)
    flagged = f.flagged()
    steps = sorted({r.step for r in tr.records})
    detail = set([steps[0], steps[-1]][:max(0, max_detail_passes)])
    for s in steps:
        recs = [r for r in tr.records if r.step == s]
        pos = recs[0].positions
        what = "prompt" if s == 0 else f"decode of {_piece(tr.pieces.get(tr.tokens[pos[0]]) if pos else None)}"
        span = f"position {pos[0]}" if len(pos) == 1 else f"positions {pos[0]}–{pos[-1]}" if pos else "no positions"
        out += [f"## Pass {s}: {what}, {span}", ""]
        measured = [r for r in recs if r.stats]
        if not measured:
            out += [f"No metrics: position {tr.scope} is not in this pass.", ""]
            continue
        mpos = sorted({p for r in measured for p in ([_abs_pos(tr, r, 0)] if tr.scope != SCOPE_ALL else r.positions)
                       if p is not None})
        out += [f"Metrics at position{'s' if len(mpos) > 1 else ''} "
                + (f"{mpos[0]}–{mpos[-1]}" if len(mpos) > 1 else str(mpos[0] if mpos else "—")) + ".", ""]
        out += _accumulation(tr, recs)
        logit_rec = next((r for r in recs if r.logits), None)
        if logit_rec is not None:
            out += _topk(tr, logit_rec)
        if s in detail:
            out += ["### Ops by layer", ""] + _layer_tables(tr, recs, flagged)
        else:
            out += ["(Per-op tables omitted for this pass.)", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def write_report(obj: Trace | Session, path: str | os.PathLike, **kw: Any) -> Path:
    """render_report(obj) saved to `path` (UTF-8) by qdbg.util.write_text; '-' is standard output."""
    write_text(path, render_report(obj, **kw))
    return Path(path)
