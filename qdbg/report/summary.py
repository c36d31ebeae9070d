"""The report's first page: the verdict, where the divergence is born, the flip, which side is
closer to R (by KL at the logits) and the ops adding the most error, one line each, from
qdbg.findings; then the plots or how to get them."""

from __future__ import annotations

from qdbg.findings import Findings, Flip
from qdbg.records import Record
from qdbg.report.details import flip_line
from qdbg.report.fmt import code, file_name, num, piece, txt
from qdbg.trace import Trace

N_SUMMARY = 3  # ops / tensors named per summary line


def focus(f: Findings) -> Flip | None:
    """The (pass, position) the summary is about: the first decisive flip, else the first flip,
    else the last pass's position."""
    flipped = [x for x in f.flips if x.flip]
    return next((x for x in flipped if x.verdict == "decisive"), flipped[0] if flipped else
                (f.flips[-1] if f.flips else None))


def logits_record(tr: Trace, step: int) -> Record | None:
    return next((r for r in tr.records if r.step == step and r.logits and "A~B" in r.logits), None)


def _setup(tr: Trace) -> str:
    sides = ", ".join(f"{lab} = {file_name(tr.models[lab].path)}" for lab in tr.labels)
    n_dec = len(tr.tokens) - len(tr.prompt)
    steps = len({r.step for r in tr.records})
    prompt = f"; prompt «{txt(tr.prompt_text)}»" if tr.prompt_text is not None else ""
    return (f"{sides}; mode {txt(tr.mode)}; {len(tr.tokens)} tokens ({len(tr.prompt)} prompt"
            + (f", {n_dec} decoded" if n_dec else "") + f") in {steps} pass(es){prompt}.")


def verdict(tr: Trace, f: Findings) -> str:
    """One sentence: do A and B pick the same next tokens, and how firmly."""
    if not f.flips:
        return "no logits recorded yet: the run stopped before the output."
    n_pass = len({x.step for x in f.flips})
    flipped = [x for x in f.flips if x.flip]
    if flipped:
        dec = sum(x.verdict == "decisive" for x in flipped)
        tie = sum(x.verdict == "near-tie" for x in flipped)
        first = flipped[0]
        kinds = ", ".join(s for s in (f"{dec} decisive" if dec else "", f"{tie} near-tie" if tie else "",
                                      f"{len(flipped) - dec - tie} unweighable" if len(flipped) - dec - tie else "")
                          if s)
        return (f"A and B pick **different next tokens** at {len(flipped)} position(s) in "
                f"{len({x.step for x in flipped})} of {n_pass} pass(es) ({kinds}); the first at pass {first.step}, "
                f"position {first.pos}: A {piece(first.a_piece)}, B {piece(first.b_piece)}.")
    fragile = sum(x.verdict == "fragile" for x in f.flips)
    return (f"A and B pick **the same next token** in every pass ({n_pass})"
            + (f"; {fragile} of them with a top-2 margin within the noise of the logit error (fragile)."
               if fragile else ", each with a margin well above the noise of the logit error."))


def _born(f: Findings) -> str:
    b = f.born
    if b.ops:
        ops = "; ".join(f"{code(o.name)} (pass {o.step}{', ' + code(o.weight) if o.weight else ''}) local "
                        f"{num(o.local, '.3g')} of rel_rms {num(o.total, '.3g')}" for o in b.ops[:N_SUMMARY])
        out = f"largest local error (what an op adds itself, attribution): {ops}."
        if b.tensors:
            out += " Weights: " + ", ".join(f"{code(t.weight)} {t.type_a or '·'}/{t.type_b or '·'} "
                                            f"({num(t.local, '.3g')})" for t in b.tensors[:N_SUMMARY]) + "."
        return out
    first = next((c for c in f.crossings if c.key == "A~B" and c.metric == "rel_rms" and c.name is not None), None)
    out = "attribution was not recorded in this run, so an op's own (local) error cannot be told from what it " \
          "inherits"
    if first is not None:
        out += f"; the first op over rel_rms {first.threshold:g} is {code(first.name)} (pass {first.step}, " \
               f"{num(first.value, '.3g')})"
    return out + "; the ops adding the most error are below."


def _flip(tr: Trace, f: Findings) -> str:
    fl = focus(f)
    if fl is None:
        return "no logits recorded yet."
    rec = logits_record(tr, fl.step)
    return flip_line(fl, None if rec is None else rec.pair.rel_rms)


def _closer(f: Findings) -> str | None:
    c = f.closer_to_r
    if c is None:
        return None
    ops = f"by op count (rel_rms to R) A is closer at {c.n_a}, B at {c.n_b} of {c.n_ops} ops, which says where, not " \
          f"which predicts R better"
    if not c.n_kl:
        return f"no logits of R recorded yet; {ops}."
    if c.by_kl is None:
        return f"a tie by KL at the logits ({num(c.kl_mean_r_a, '.4g')} each); {ops}."
    return (f"**{c.by_kl}**, by KL at the logits: mean KL(R‖A) {num(c.kl_mean_r_a, '.4g')} vs KL(R‖B) "
            f"{num(c.kl_mean_r_b, '.4g')} over {c.n_kl} (pass, position)(s); {ops}.")


def summary(tr: Trace, f: Findings, plots: list[str]) -> list[str]:
    """The summary section; `plots` is the Markdown that shows the images or says why there are none."""
    out = ["## Summary", "", _setup(tr), "", f"**Verdict:** {verdict(tr, f)}", ""]
    if f.nonfinite is not None:
        nf = f.nonfinite
        what = "; ".join(f"{lab}: {n} NaN, {i} Inf" for lab, (n, i) in nf.counts.items())
        out.append(f"- **NaN/Inf:** first at {code(nf.name)} (pass {nf.step}): {what}.")
    out.append(f"- **Where the divergence is born:** {_born(f)}")
    fl = focus(f)
    out.append(f"- **{'The flip' if fl is not None and fl.flip else 'No flip; the last pass'}:** {_flip(tr, f)}")
    closer = _closer(f)
    if closer is not None:
        out.append(f"- **Closer to R:** {closer}")
    if f.amplifiers:
        out.append("- **Ops adding the most error** (rel_rms − input rel_rms; not the ratio amp): " + ", ".join(
            f"{code(a.name)} (pass {a.step}) {num(a.added, '+.3g')} (amp {num(a.amp, '.3g')})"
            for a in f.amplifiers[:N_SUMMARY]) + ".")
    else:
        out.append("- **Ops adding the most error:** none; A and B agree at every measured op.")
    return out + [""] + plots
