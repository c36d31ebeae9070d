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

from qdbg.records import Record
from qdbg.scope import ALL as SCOPE_ALL, LAST as SCOPE_LAST, Scope
from qdbg.session import Session
from qdbg.trace import Trace, snapshot
from qdbg.util import write_text

THRESHOLDS = (("rel_rms", ">", 0.01), ("rel_rms", ">", 0.05), ("rel_rms", ">", 0.1),
              ("sqnr", "<", 30.0), ("sqnr", "<", 20.0))
N_FIRST = 4          # leading values shown per op
N_AMP = 5            # amplifiers listed
NEAR_TIE_SIGMAS = 3.0
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

def _crossings(tr: Trace) -> list[str]:
    keys = [k for k in ("A~B", "A~R", "B~R") if any(k in r.pairs for r in tr.records)]
    rows = []
    for metric, op, thr in THRESHOLDS:
        row = [f"{metric} {op} {thr:g}" + (" dB" if metric == "sqnr" else "")]
        fmt = ".1f" if metric == "sqnr" else ".4g"
        for k in keys:
            hit = next((r for r in tr.records if isinstance(v := _get(r, k, metric), (int, float))
                        and v == v and (v > thr if op == ">" else v < thr)), None)
            row.append("never" if hit is None else
                       f"{_code(hit.name)} (pass {hit.step}, {num(_get(hit, k, metric), fmt)})")
        rows.append(row)
    return ["### First op over each threshold", ""] + table(["threshold"] + keys, rows)


def _amplifiers(tr: Trace) -> list[str]:
    amps = [(a, r) for r in tr.records if isinstance(a := _get(r, "A~B", "amp"), float) and math.isfinite(a)]
    amps.sort(key=lambda t: (-t[0], t[1].index))
    out = ["### Largest amplifiers (A vs B)", ""]
    if not amps:
        return out + ["No op amplifies a measurable input error.", ""]
    rows = []
    for a, r in amps[:N_AMP]:
        rr = _get(r, "A~B", "rel_rms")
        inp = rr / a if isinstance(rr, (int, float)) and a else None
        rows.append([_code(r.name), str(r.step), num(a, ".3g"), num(inp), num(rr)])
    return out + table(["op", "pass", "amp", "input rel_rms", "output rel_rms"], rows)


def _nonfinite(tr: Trace) -> list[str]:
    for r in tr.records:
        bad = [(lab, s.get("nan_count", 0), s.get("inf_count", 0)) for lab, s in r.stats.items()
               if s.get("nan_count", 0) or s.get("inf_count", 0)]
        if bad:
            what = "; ".join(f"{lab}: {n} NaN, {i} Inf" for lab, n, i in bad)
            return [f"- **Non-finite values** first appear at {_code(r.name)} (pass {r.step}): {what}.", ""]
    return ["- No NaN or Inf in any recorded op (within the scope).", ""]


def _flip_lines(tr: Trace) -> list[str]:
    out = []
    for rec in tr.records:
        ab = (rec.logits or {}).get("A~B")
        if not ab:
            continue
        rr, rmsb = _get(rec, "A~B", "rel_rms"), (rec.stats.get("B") or {}).get("rms")
        e = rr * rmsb if isinstance(rr, float) and isinstance(rmsb, float) else None
        noise = None if e is None or not math.isfinite(e) else NEAR_TIE_SIGMAS * math.sqrt(2.0) * e
        err = f"logit error rms {num(e, '.3g')} (rel_rms {num(rr, '.3g')})"
        poss = ab["positions"]
        show = [i for i, p in enumerate(poss) if p.get("flip")] or [len(poss) - 1]
        for i in show:
            p = poss[i]
            where = f"Pass {rec.step}, position {num(_abs_pos(tr, rec, i))}"
            at, bt = p["a"]["top"], p["b"]["top"]
            if not at or not bt:
                continue
            x, y = at[0], bt[0]
            ma, mb = p["a"].get("margin"), p["b"].get("margin")
            margins = f"A's top-2 margin {num(ma, '.3g')}, B's {num(mb, '.3g')}"
            if p.get("flip"):
                ga = next((x["logit"] - t["logit"] for t in at if t["id"] == y["id"]), ma)
                gb = next((y["logit"] - t["logit"] for t in bt if t["id"] == x["id"]), mb)
                swing = ga + gb if isinstance(ga, float) and isinstance(gb, float) else None
                if swing is None or noise is None or not math.isfinite(swing):
                    verdict = "cannot be weighed (non-finite logits)"
                elif swing <= noise:
                    verdict = f"**near-tie**: the swing is within 3·√2·rms = {num(noise, '.3g')} of noise"
                else:
                    verdict = (f"**decisive**: the swing is {num(swing / (noise / NEAR_TIE_SIGMAS) if noise > 0 else math.inf, '.3g')}σ "
                               f"of the noise; the error is concentrated on these tokens")
                out.append(f"- {where}: **top-1 flipped** — A picks {_piece(x.get('piece'))} ({x['id']}), "
                           f"B picks {_piece(y.get('piece'))} ({y['id']}). {margins}; the gap between the two "
                           f"candidates swings by {num(swing, '.3g')} logits between the sides, against a {err} "
                           f"⇒ {verdict}.")
            else:
                safe = (ma is not None and noise is not None and math.isfinite(ma) and ma > noise)
                out.append(f"- {where}: no flip — both pick {_piece(x.get('piece'))} ({x['id']}). "
                           f"{margins} vs a {err} ⇒ " + ("margin well above the noise." if safe else
                                    "fragile: margin within 3·√2·rms of the noise."))
            if len(poss) > 1 and i == show[-1] and ab.get("flip_positions"):
                out[-1] += f" ({len(ab['flip_positions'])} of {len(poss)} positions flip in this pass.)"
        for k in ("A~R", "B~R"):
            q = (rec.logits or {}).get(k)
            if q and q["positions"]:
                n = sum(1 for p in q["positions"] if p.get("top1_agree"))
                out.append(f"  - {k[0]} agrees with R's top-1 at {n} of {len(q['positions'])} position(s) "
                           f"(KL({k[0]}‖R) {num(q['positions'][-1].get('kl_ab'), '.3g')} at the last).")
    return (["### Top-1 flips", ""] + out + [""]) if out else ["- No logits recorded yet.", ""]


def _closer_to_r(tr: Trace) -> list[str]:
    both = [r for r in tr.records if isinstance(_get(r, "A~R", "rel_rms"), float)
            and isinstance(_get(r, "B~R", "rel_rms"), float)]
    if not both:
        return []
    win = {r.index: _closer(_get(r, "A~R", "rel_rms"), _get(r, "B~R", "rel_rms")) for r in both}
    na, nb = sum(w == "A" for w in win.values()), sum(w == "B" for w in win.values())
    best = "A" if na > nb else ("B" if nb > na else None)
    lout = [r for r in both if r.layer is not None and r.name == f"l_out-{r.layer}"]
    out = ["### Closer to R", ""]
    head = (f"{best} stays closer to R" if best else "Neither side is consistently closer to R") + \
        f": A at {na} and B at {nb} of {len(both)} ops"
    if lout:
        lw = [win[r.index] for r in lout]
        last = lout[-1]
        head += (f"; at the layer outputs A at {lw.count('A')}, B at {lw.count('B')} of {len(lout)} "
                 f"(last, {_code(last.name)} pass {last.step}: rel_rms A~R {num(_get(last, 'A~R', 'rel_rms'))} "
                 f"vs B~R {num(_get(last, 'B~R', 'rel_rms'))})")
    lg = next((r.logits for r in reversed(tr.records) if r.logits and "A~R" in r.logits and "B~R" in r.logits), None)
    if lg and lg["A~R"]["positions"] and lg["B~R"]["positions"]:
        pa, pb = lg["A~R"]["positions"][-1], lg["B~R"]["positions"][-1]
        head += (f"; at the last logits KL(R‖A) {num(pa.get('kl_ba'), '.3g')} vs KL(R‖B) "
                 f"{num(pb.get('kl_ba'), '.3g')}")
    out.append(f"- {head}.")
    if best:
        other = "B" if best == "A" else "A"
        names = [f"{_code(r.name)}" + (f" (pass {r.step})" if r.step else "") for r in both if win[r.index] == other]
        if names:
            out.append(f"- {other} is closer at: {', '.join(names[:8])}" + (" …" if len(names) > 8 else "") + ".")
    return out + [""]


def _flagged(tr: Trace) -> set[int]:
    """Indices of the records the findings name: threshold crossings, top amplifiers, first NaN/Inf."""
    out: set[int] = set()
    for k in ("A~B", "A~R", "B~R"):
        for metric, op, thr in THRESHOLDS:
            hit = next((r for r in tr.records if isinstance(v := _get(r, k, metric), (int, float))
                        and v == v and (v > thr if op == ">" else v < thr)), None)
            if hit is not None:
                out.add(hit.index)
    amps = [(a, r.index) for r in tr.records if isinstance(a := _get(r, "A~B", "amp"), float) and math.isfinite(a)]
    out.update(i for _, i in sorted(amps, key=lambda t: (-t[0], t[1]))[:N_AMP])
    out.update(next(([r.index] for r in tr.records if any(
        s.get("nan_count") or s.get("inf_count") for s in r.stats.values())), []))
    return out


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
    out += ["## Findings", ""] + _nonfinite(tr) + _flip_lines(tr) + _closer_to_r(tr) + _crossings(tr) + _amplifiers(tr)
    flagged = _flagged(tr)
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
