"""The findings in full, for the report's appendix: every top-1 flip weighed against the logit
error, closer to R, where the divergence is born, the first op over each threshold and the ops
adding the most error. Every number comes from qdbg.findings; this module only writes it."""

from __future__ import annotations

import math

from qdbg.findings import NEAR_TIE_SIGMAS, THRESHOLDS, Findings, Flip
from qdbg.report.fmt import code, code_label, num, piece, table
from qdbg.trace import Trace


def crossings(tr: Trace, f: Findings) -> list[str]:
    keys = list(dict.fromkeys(c.key for c in f.crossings))
    rows = []
    for metric, op, thr in THRESHOLDS:
        row = [f"{metric} {op} {thr:g}" + (" dB" if metric == "sqnr" else "")]
        fmt = ".1f" if metric == "sqnr" else ".4g"
        for c in f.crossings:
            if (c.metric, c.op, c.threshold) == (metric, op, thr):
                row.append("never" if c.name is None else f"{code(c.name)} (pass {c.step}, {num(c.value, fmt)})")
        rows.append(row)
    return ["### First op over each threshold", ""] + table(["threshold"] + keys, rows)


def amplifiers(f: Findings) -> list[str]:
    out = ["### Ops adding the most error (A vs B)", "",
           "Error added = rel_rms − the largest input rel_rms: the relative error an op puts on top of what "
           "came in. amp (their ratio) is shown for context; a ratio of two tiny errors says little.", ""]
    if not f.amplifiers:
        return out + ["No op adds a measurable error.", ""]
    rows = [[code(a.name), str(a.step), num(a.added, "+.4g"), num(a.input_rel_rms), num(a.rel_rms), num(a.amp, ".3g")]
            for a in f.amplifiers]
    return out + table(["op", "pass", "error added", "input rel_rms", "output rel_rms", "amp"], rows)


def born(f: Findings) -> list[str]:
    """Ops and weights ranked by the local error attribution measured (qdbg.findings.divergence_born)."""
    b = f.born
    out = ["### Where the divergence is born", ""]
    if not b.ops:
        return out + ["Attribution was not recorded for these ops (no `local`/`inherited` fields), so local "
                      "error cannot be separated from inherited error; see the ops adding the most error.", ""]
    out += [f"Local error: what the op adds itself (A's op on B's inputs against B's), relative to B's output; "
            f"{b.n_measured} ops measured.", ""]
    out += table(["op", "pass", "layer", "weight", "types A/B", "local", "inherited", "total rel_rms"],
                 [[code(o.name), str(o.step), num(o.layer), code(o.weight) if o.weight else "—",
                   f"{o.type_a or '·'}/{o.type_b or '·'}" if o.weight else "—", num(o.local), num(o.inherited),
                   num(o.total)] for o in b.ops])
    if b.tensors:
        out += table(["weight", "types A/B", "largest local", "at", "pass", "passes"],
                     [[code(t.weight), f"{t.type_a or '·'}/{t.type_b or '·'}", num(t.local), code(t.op), str(t.step),
                       str(t.n_passes)] for t in b.tensors])
    return out


def nonfinite(f: Findings) -> list[str]:
    nf = f.nonfinite
    if nf is None:
        return ["- No NaN or Inf in any recorded op (within the scope).", ""]
    what = "; ".join(f"{lab}: {n} NaN, {i} Inf" for lab, (n, i) in nf.counts.items())
    return [f"- **Non-finite values** first appear at {code(nf.name)} (pass {nf.step}): {what}.", ""]


VERDICTS = {"near-tie": "**near-tie**: the swing is within 3·√2·rms = {noise} of noise",
            "decisive": "**decisive**: the swing is {sigmas}σ of the noise; the error is concentrated on these tokens",
            "unweighable": "cannot be weighed (non-finite logits)",
            "safe": "margin well above the noise.",
            "fragile": "fragile: margin within 3·√2·rms of the noise."}


def flip_line(fl: Flip, rel_rms: float | None) -> str:
    """One (pass, position): the picks, the margins and the swing against the logit error, and the
    verdict qdbg.findings gave."""
    where = f"Pass {fl.step}, position {num(fl.pos)}"
    err = f"logit error rms {num(fl.logit_error, '.3g')} (rel_rms {num(rel_rms, '.3g')})"
    margins = f"A's top-2 margin {num(fl.margin_a, '.3g')}, B's {num(fl.margin_b, '.3g')}"
    sig = fl.swing / (fl.noise / NEAR_TIE_SIGMAS) if fl.swing is not None and fl.noise else math.inf
    verdict = VERDICTS[fl.verdict].format(noise=num(fl.noise, ".3g"), sigmas=num(sig, ".3g"))
    if fl.flip:
        return (f"{where}: **top-1 flipped** — A picks {piece(fl.a_piece)} ({fl.a_id}), B picks {piece(fl.b_piece)} "
                f"({fl.b_id}). {margins}; the gap between the two candidates swings by {num(fl.swing, '.3g')} "
                f"logits between the sides, against a {err} ⇒ {verdict}.")
    return f"{where}: no flip — both pick {piece(fl.a_piece)} ({fl.a_id}). {margins} vs a {err} ⇒ {verdict}"


def flip_lines(tr: Trace, f: Findings) -> list[str]:
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
            out.append("- " + flip_line(fl, rec.pair.rel_rms))
            if len(ab.positions) > 1 and j == len(shown) - 1 and ab.flip_positions:
                out[-1] += f" ({len(ab.flip_positions)} of {len(ab.positions)} positions flip in this pass.)"
        for k in ("A~R", "B~R"):
            q = (rec.logits or {}).get(k)
            if q and q.positions:
                n = sum(1 for p in q.positions if p.top1_agree)
                out.append(f"  - {k[0]} agrees with R's top-1 at {n} of {len(q.positions)} position(s) "
                           f"(KL({k[0]}‖R) {num(q.positions[-1].kl_ab, '.3g')} at the last).")
    return (["### Top-1 flips", ""] + out + [""]) if out else ["- No logits recorded yet.", ""]


def closer_to_r(f: Findings) -> list[str]:
    c = f.closer_to_r
    if c is None:
        return []
    out = ["### Closer to R", ""]
    if c.by_kl:
        out.append(f"- By KL at the logits: **{c.by_kl}** is closer to R — mean KL(R‖A) {num(c.kl_mean_r_a, '.4g')} vs "
                   f"KL(R‖B) {num(c.kl_mean_r_b, '.4g')} over {c.n_kl} (pass, position)(s).")
    elif c.n_kl:
        out.append(f"- By KL at the logits: a tie, mean KL(R‖A) = KL(R‖B) = {num(c.kl_mean_r_a, '.4g')} "
                   f"over {c.n_kl} (pass, position)(s).")
    else:
        out.append("- By KL at the logits: no logits of R recorded yet.")
    if c.kl_r_a is not None or c.kl_r_b is not None:
        out.append(f"- At the last logits: KL(R‖A) {num(c.kl_r_a, '.4g')} vs KL(R‖B) {num(c.kl_r_b, '.4g')}.")
    head = f"- Along the way (rel_rms to R, op by op): A is closer at {c.n_a} and B at {c.n_b} of {c.n_ops} ops"
    if c.last_layer_output:
        lo, last = c.layer_outputs, c.last_layer_output
        head += (f"; at the layer outputs A at {lo['A']}, B at {lo['B']} of {lo['n']} "
                 f"(last, {code(last['op'])} pass {last['pass']}: rel_rms A~R {num(last['a_r'])} "
                 f"vs B~R {num(last['b_r'])})")
    out.append(head + ".")
    if c.best:
        names = c.b_closer_at if c.best == "A" else c.a_closer_at
        other = "B" if c.best == "A" else "A"
        if names:
            n_other = c.n_b if c.best == "A" else c.n_a
            out.append(f"- {other} is closer at: {', '.join(code_label(n) for n in names)}"
                       + (" …" if n_other > len(names) else "") + ".")
    return out + [""]
