"""The report's tables: configuration, error through the layers (per pass and across passes),
per-layer op tables (full for the layers that matter, compact in the appendix) and the top-k."""

from __future__ import annotations

import html
import math
from typing import Any

from qdbg.records import Record
from qdbg.report.fmt import code, file_name, get, num, pct, piece, table, txt
from qdbg.scope import ALL as SCOPE_ALL, LAST as SCOPE_LAST, Scope
from qdbg.trace import Trace

N_FIRST = 4          # leading values shown per op
COLLAPSE_LAYERS = 10  # more layer groups than this: each in a <details> block
RESIDUAL = ("inp_embd", "result_norm", "result_output")


def is_residual(r: Record) -> bool:
    """The ops that carry the residual stream from layer to layer, and the output."""
    return r.name in RESIDUAL or (r.layer is not None and r.name == f"l_out-{r.layer}")


def abs_pos(tr: Trace, rec: Record, p: int) -> int | None:
    """Absolute token position of row p of a scoped logits comparison."""
    return Scope.parse(tr.scope).absolute(rec.positions, p)


def config(tr: Trace) -> list[str]:
    out = ["### Configuration", ""]
    rows = []
    for lab in tr.labels:
        mi = tr.models[lab]
        size = "—" if mi.size is None else f"{mi.size / (1 << 20):.2f} MiB"
        sha = "—" if not mi.sha256 else f"`{mi.sha256[:16]}…`"
        rows.append([lab, file_name(mi.path), txt(mi.name), size, sha,
                     txt(mi.type_summary())])
    out += table(["side", "file", "name", "size", "sha256", "quant mix"], rows)
    c = tr.models["A"].config
    out.append(f"- Architecture: {txt(c.arch)}, {c.n_layer} layers, n_embd {c.n_embd}, n_head {c.n_head} "
               f"(kv {c.n_head_kv}), head_dim {c.head_dim}, n_ff {c.n_ff}, n_vocab {c.n_vocab}, "
               f"context {c.n_ctx_train}, rope {txt(c.rope_type)}, ffn {txt(c.ffn_act)}")
    scope = {SCOPE_LAST: "last (the last position of each pass)", SCOPE_ALL: "all positions"}.get(
        tr.scope, f"position {tr.scope}")  # type: ignore[call-overload]
    prof = (tr.numerics or {}).get("profile") or {}
    settings = (tr.numerics or {}).get("settings") or {}
    out.append(f"- Mode: {txt(tr.mode)}; scope: {scope}; top-k: {tr.top_k}")
    if prof:
        out.append(f"- Numerics: reproduces {txt(prof.get('description', prof.get('id', '')))}, bit for bit"
                   + (f" (micro-batch {settings.get('n_ubatch')}, context {settings.get('n_ctx')}, flash "
                      f"attention {'on' if settings.get('flash_attn') else 'off'}, {settings.get('n_threads')} "
                      f"thread(s))" if settings else ""))
    out.append("- Sides: A and B are the quantizations compared (B is the denominator of every ratio)"
               + ("; R is the reference." if "R" in tr.labels else "."))
    if tr.prompt_text is not None:
        out.append(f"- Prompt: «{txt(tr.prompt_text)}»")
    n_dec = len(tr.tokens) - len(tr.prompt)
    out.append(f"- Tokens: {len(tr.tokens)} ({len(tr.prompt)} prompt"
               + (f", {n_dec} decoded, driver {tr.driver})" if n_dec else ")"))
    bps = tr.breakpoints.get("breakpoints", [])
    out.append("- Breakpoints: " + ("; ".join(
        f"#{b['id']} {code(b['expr'])}" + ("" if b["enabled"] else " (disabled)") + f" hits {b['hits']}"
        for b in bps) if bps else "none"))
    cur = tr.records[tr.cursor] if 0 <= tr.cursor < len(tr.records) else None
    out.append(f"- History: {len(tr.records)} ops over {len({r.step for r in tr.records})} pass(es); cursor "
               + (f"at op {cur.index} {code(cur.name)} (pass {cur.step})" if cur else "before the first op"))
    out.append("")
    rows = [[str(i), str(t), piece(tr.pieces.get(t)), "prompt" if i < len(tr.prompt) else "decoded"]
            for i, t in enumerate(tr.tokens)]
    if len(rows) <= 32:
        out += table(["pos", "id", "piece", "from"], rows)
    else:
        out += [" ".join(f"{r[0]}:{r[1]}{r[2]}" for r in rows), ""]
    return out


def accumulation(tr: Trace, recs: list[Record]) -> list[str]:
    keys = [k for k in ("A~B", "A~R", "B~R") if any(k in r.pairs for r in recs)]
    sel = [r for r in recs if is_residual(r)]
    head = ["layer", "op"]
    for k in keys:
        head += [f"rel_rms {k}", f"SQNR {k} dB", f"cos {k}"]
    head.append("growth A~B")
    if "A~R" in keys and "B~R" in keys:
        head.append("closer to R")
    rows, prev = [], None
    for r in sel:
        row = ["—" if r.layer is None else str(r.layer), f"{code(r.name)}"]
        for k in keys:
            row += [num(get(r, k, "rel_rms")), num(get(r, k, "sqnr"), ".1f"), num(get(r, k, "cos"), ".6f")]
        cur = get(r, "A~B", "rel_rms")
        ok = isinstance(cur, float) and isinstance(prev, float) and prev > 0 and math.isfinite(prev)
        row.append(f"×{num(cur / prev, '.3g')}" if ok else "—")
        prev = cur
        if "A~R" in keys and "B~R" in keys:
            row.append(_closer(get(r, "A~R", "rel_rms"), get(r, "B~R", "rel_rms")))
        rows.append(row)
    if not rows:
        return ["(no layer outputs recorded in this pass)", ""]
    return ["#### Error accumulation (residual stream)", ""] + table(head, rows)


def _closer(a: Any, b: Any) -> str:
    if not all(isinstance(v, float) and v == v for v in (a, b)):
        return "—"
    return "tie" if a == b else ("A" if a < b else "B")


def layer_groups(recs: list[Record]) -> list[tuple[str, list[Record]]]:
    """A pass's records grouped as 'Embedding', 'Layer N' ..., 'Output', in order."""
    groups: list[tuple[str, list[Record]]] = []
    for r in recs:
        title = f"Layer {r.layer}" if r.layer is not None else ("Output" if groups and any(
            g[1][0].layer is not None for g in groups) else "Embedding")
        if not groups or groups[-1][0] != title:
            groups.append((title, []))
        groups[-1][1].append(r)
    return groups


def layer_tables(tr: Trace, recs: list[Record], flagged: set[int], added: dict[int, tuple[float, float]],
                 level: str = "####") -> list[str]:
    """Compact per-layer op tables; with more than COLLAPSE_LAYERS groups each one is a <details>
    block, open when it holds an op named in the findings."""
    groups = layer_groups(recs)
    out: list[str] = []
    for title, rs in groups:
        if len(groups) <= COLLAPSE_LAYERS:
            out += [f"{level} {title}", ""] + group_compact(tr, rs, added)
            continue
        worst = max(rs, key=lambda r: v if isinstance(v := get(r, "A~B", "rel_rms"), float) and v == v else -1.0)
        summ = f"{title}: {len(rs)} ops, largest rel_rms A~B {num(get(worst, 'A~B', 'rel_rms'))} at {worst.name}"
        opened = " open" if any(r.index in flagged for r in rs) else ""
        out += [f"<details{opened}><summary>{html.escape(summ)}</summary>", ""] + group_compact(tr, rs, added) + \
            ["</details>", ""]
    return out


def group_compact(tr: Trace, rs: list[Record], added: dict[int, tuple[float, float]]) -> list[str]:
    """One layer's ops in one table: rms of A and B, the A-vs-B divergence, the error each op adds
    (and its local part when attribution ran), each side's rel_rms to R."""
    hasr = "R" in tr.labels
    loc = any(get(r, "A~B", "local") is not None for r in rs)
    head = ["op", "W " + "/".join(tr.labels), "rms A", "rms B", "Δ", "rel_rms", "SQNR dB", "cos", "max_abs",
            "amp", "added"] + (["local"] if loc else []) + (["rel_rms A~R", "rel_rms B~R"] if hasr else [])
    rows = []
    for r in rs:
        if not r.stats:
            rows.append([code(r.name), "(not in scope)"] + [""] * (len(head) - 2))
            continue
        w = "/".join(str(r.weight_types.get(lab) or "·") for lab in tr.labels) if r.weight else "—"
        ra, rb = (r.stats[k].get("rms") if k in r.stats else None for k in "AB")
        p = r.pairs.get("A~B") or {}
        row = [code(r.name), txt(w), num(ra), num(rb), pct(ra, rb), num(p.get("rel_rms")),
               num(p.get("sqnr"), ".1f"), num(p.get("cos"), ".6f"), num(p.get("max_abs")), num(p.get("amp"), ".3g"),
               num(added[r.index][1], "+.3g") if r.index in added else "—"]
        if loc:
            row.append(num(p.get("local")))
        if hasr:
            row += [num(get(r, "A~R", "rel_rms")), num(get(r, "B~R", "rel_rms"))]
        rows.append(row)
    return table(head, rows)


def across_passes(tr: Trace, steps: list[int], key: str = "A~B") -> list[str]:
    """rel_rms of `key` along the residual stream, one column per pass (at most 8: the first,
    the last and those between, evenly)."""
    if len(steps) > 8:
        steps = sorted({steps[round(i * (len(steps) - 1) / 7)] for i in range(8)})
    by = {(r.step, r.name): r for r in tr.records if is_residual(r) and r.step in steps}
    names = list(dict.fromkeys(r.name for r in tr.records if is_residual(r)))
    rows = []
    for n in names:
        rec = next((by[(s, n)] for s in steps if (s, n) in by), None)
        layer = "—" if rec is None or rec.layer is None else str(rec.layer)
        rows.append([layer, code(n)] + [num(get(by[(s, n)], key, "rel_rms")) if (s, n) in by else "—"
                                        for s in steps])
    return table(["layer", "op"] + [f"pass {s}" for s in steps], rows) if rows else []


def group_full(tr: Trace, rs: list[Record]) -> list[str]:
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
            vrows.append([f"{code(r.name)}", "(not in scope)"] + [""] * (len(vh) - 2))
            continue
        w = "/".join(str(r.weight_types.get(lab) or "·") for lab in tr.labels) if r.weight else "—"
        row = [f"{code(r.name)}", txt(w)]
        for key in ("rms", "min", "max"):
            row += [num(s["A"].get(key)), num(s["B"].get(key)), pct(s["A"].get(key), s["B"].get(key))]
        if hasr:
            row += [num(s["R"].get("rms")), pct(s["A"].get("rms"), s["R"].get("rms")),
                    pct(s["B"].get("rms"), s["R"].get("rms"))]
        vrows.append(row)
        p = r.pairs.get("A~B") or {}
        d = [f"{code(r.name)}", num(p.get("rel_rms")), num(p.get("sqnr"), ".1f"), num(p.get("cos"), ".6f"),
             num(p.get("max_abs")), num(p.get("max_rel")), num(p.get("amp"), ".3g"), num(p.get("sign_flips"))]
        if hasr:
            d += [num(get(r, "A~R", "rel_rms")), num(get(r, "B~R", "rel_rms"))]
        drows.append(d)
        nonfin = {lab: (s[lab].get("nan_count", 0), s[lab].get("inf_count", 0)) for lab in tr.labels}
        fa, fb = s["A"].get("first") or [], s["B"].get("first") or []
        nf = "; ".join(f"{lab}: {n} NaN, {i} Inf" for lab, (n, i) in nonfin.items() if n or i)
        firsts = " · ".join(f"{lab} [{', '.join(num(v) for v in (s[lab].get('first') or [])[:N_FIRST])}]"
                            for lab in tr.labels)
        deltas = ", ".join(pct(a, b) for a, b in zip(fa[:N_FIRST], fb))
        first.append(f"- {code(r.name)}: {firsts} · Δ A vs B [{deltas}]" + (f" — **{nf}**" if nf else ""))
    out += ["Values (Δ: A relative to B; A/B vs R: relative to R):", ""] + table(vh, vrows)
    if drows:
        out += ["Divergence A vs B" + (" (and each vs R)" if hasr else "") + ":", ""] + table(dh, drows)
    if first:
        out += ["<details><summary>first values</summary>", ""] + first + ["", "</details>", ""]
    return out


def topk(tr: Trace, rec: Record, heading: str = "#### Final top-k", at: int | None = None) -> list[str]:
    """The top-k of each side at one position of `rec`'s logits (row `at`, default the last) and
    the distribution metrics of each pair; with several positions, a top-1 line for each first."""
    lg = rec.logits or {}
    ab = lg.get("A~B")
    if not ab or not ab.get("positions"):
        return []
    out = [heading, ""]
    poss = ab["positions"]
    i = len(poss) - 1 if at is None else at
    if len(poss) > 1:
        rows = []
        for i, p in enumerate(poss):
            a1, b1 = (p["a"]["top"] or [{}])[0], (p["b"]["top"] or [{}])[0]
            rows.append([num(abs_pos(tr, rec, i)), piece(a1.get("piece")), piece(b1.get("piece")),
                         num(p.get("flip")), num(p.get("kl_ab")), num(p.get("js")), num(p.get("topk_overlap"), ".2f")])
        out += table(["pos", "A top-1", "B top-1", "flip", "KL(A‖B)", "JS", "overlap"], rows)
        out += [f"Detail at position {num(abs_pos(tr, rec, i))}:", ""]
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
            row += [num(t.get("id")), piece(t.get("piece")) if t else "", num(t.get("logit"), ".3f"),
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


