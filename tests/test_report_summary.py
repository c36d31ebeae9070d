"""The report's first page: summary first (verdict, where the divergence is born, the flip, closer to
R by KL at the logits), the appendix after it, ops ranked by the error they add."""

from __future__ import annotations

import copy

import pytest

from qdbg.findings import Findings
from qdbg.report import render_report


@pytest.fixture(scope="module")
def trace(abr_trace):
    return abr_trace(2)


def _summary(text: str) -> str:
    return text.split("## Error through the layers")[0]


def test_summary_comes_first_and_says_it_all(trace):
    text = render_report(trace)
    f = Findings.of(trace.records)
    head = text.split("\n## ")
    assert head[1].startswith("Summary\n")  # the first section after the title
    s = _summary(text)
    assert len(s.splitlines()) <= 40  # one page
    assert "**Verdict:** A and B pick" in s
    assert "- **Where the divergence is born:**" in s
    assert ("- **The flip:**" in s) == any(x.flip for x in f.flips)
    c = f.closer_to_r
    assert c is not None and c.by_kl in ("A", "B") and c.n_kl == 3
    other = "B" if c.by_kl == "A" else "A"
    assert f"- **Closer to R:** **{c.by_kl}**, by KL at the logits: mean KL(R‖A) {c.kl_mean_r_a:.4g} vs KL(R‖B) " \
           f"{c.kl_mean_r_b:.4g} over 3 (pass, position)(s)" in s
    assert getattr(c, f"kl_mean_r_{c.by_kl.lower()}") < getattr(c, f"kl_mean_r_{other.lower()}")
    top = f.amplifiers[0]
    assert f"- **Ops adding the most error** (rel_rms − input rel_rms; not the ratio amp): `{top.name}` (pass " \
           f"{top.step}) {top.added:+.3g}" in s
    order = [text.index(h) for h in ("## Summary", "## Error through the layers", "## Layers that matter",
                                     "## Appendix", "### Configuration", "### Findings in full", "### Pass 0:")]
    assert order == sorted(order)


def test_born_from_attribution_or_said_missing(trace):
    trace = copy.deepcopy(trace)
    recs = trace.records
    for r in recs:
        for pm in r.pairs.values():
            pm.local = pm.inherited = None
    text = render_report(trace)
    assert "- **Where the divergence is born:** attribution was not recorded in this run" in _summary(text)
    assert "Attribution was not recorded for these ops" in text
    # attribution present: the op with the largest local error leads, its weight is named
    target = next(r for r in recs if r.name == "ffn_out-1" and r.step == 0)
    for r in recs:
        if "A~B" in r.pairs and r.pairs["A~B"].rel_rms is not None:
            r.pairs["A~B"].local, r.pairs["A~B"].inherited = 0.001, r.pairs["A~B"].rel_rms
    target.pairs["A~B"].local = 0.5
    s = _summary(render_report(trace))
    assert "- **Where the divergence is born:** largest local error (what an op adds itself, attribution): " \
           "`ffn_out-1` (pass 0, `blk.1.ffn_down.weight`) local 0.5 of rel_rms" in s
    t = target.weight_types
    assert f"Weights: `blk.1.ffn_down.weight` {t['A']}/{t['B']} (0.5)" in s
    assert "### Layer 1, pass 0" in render_report(trace)  # the layer is shown in full


def test_tiny_norm_with_a_huge_ratio_is_not_the_top_amplifier(trace):
    """A norm whose tiny input error grows x50 adds little; it must not lead the list (issue 14)."""
    trace = copy.deepcopy(trace)
    recs = [r for r in trace.records if r.step == 0]
    by = {r.name: r for r in recs}
    inp, norm = by["ffn_inp-1"].pairs["A~B"], by["ffn_norm-1"].pairs["A~B"]
    inp.rel_rms, norm.rel_rms, norm.amp = 1e-5, 5e-4, 50.0
    assert max(r.pairs["A~B"].amp or 0 for r in trace.records if "A~B" in r.pairs) == 50.0  # the largest ratio
    text = render_report(trace)
    table = text.split("### Ops adding the most error (A vs B)")[1].split("\n### ")[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| `")]
    assert rows and not rows[0].startswith("| `ffn_norm-1`")
    assert all("`ffn_norm-1` (pass 0) +" not in ln for ln in _summary(text).splitlines() if "adding the most" in ln)
    f = Findings.of(trace.records)
    assert f.amplifiers[0].added > 10 * (5e-4 - 1e-5)
