"""Written reports: sections, live == reloaded, flips weighed against the logit error, NaN shown."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import qdbg.live
import qdbg.trace as qtrace
import qdbg.session
from qdbg.engine.forward import Engine
from qdbg.report import num, pct, render_report
from qdbg.session import open_session
from qdbg.trace import load_trace, open_replay, save_trace

TOKENS = [1, 17, 42, 99, 300, 7]


@pytest.fixture(scope="module")
def paths(synth_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("rep")
    a = synth_model("llama", "Q4_K_M")
    twin = d / "twin-Q4_K_M.gguf"  # same bytes as A under another name: sides that agree exactly
    shutil.copyfile(a, twin)
    return {"A": str(a), "B": str(synth_model("llama", "Q5_K_M")), "R": str(synth_model("llama", "F16")),
            "twin": str(twin)}


def _run(paths, sides, decode=1):
    s = open_session({k: paths[v] for k, v in sides.items()}, TOKENS)
    s.breakpoints.add("rel_rms > 0.2")
    s.run_to_end()
    if decode:
        s.decode(decode, "a")
        s.run_to_end()
    return s


@pytest.fixture
def engines_with(monkeypatch):
    """Install per-file op overrides in the engines a Session creates."""
    def install(by_path):
        monkeypatch.setattr(qdbg.live, "Engine",
                            lambda m, mode, **kw: Engine(m, mode, **{**kw, "overrides": by_path.get(str(m.path))}))
    return install


def test_sections_and_live_equals_reloaded(paths, tmp_path):
    s = _run(paths, {"A": "A", "B": "B", "R": "R"})
    text = render_report(s)
    for sec in ("# qdbg report", "## Summary", "**Verdict:**", "**Where the divergence is born:**",
                "**Closer to R:**", "by KL at the logits", "### Plots", "## Error through the layers",
                "## Layers that matter", "## Appendix", "### Configuration", "quant mix",
                "- Architecture: llama, 2 layers", "### Findings in full", "### Top-1 flips", "### Closer to R",
                "### Where the divergence is born", "### First op over each threshold",
                "### Ops adding the most error", "### Pass 0: prompt, positions 0–5", "### Pass 1: decode of",
                "#### Error accumulation", "`l_out-1`", "#### Final top-k", "KL(x‖y)", "top-k overlap",
                "#### Ops by layer", "##### Embedding", "##### Layer 0", "##### Layer 1", "##### Output",
                "rms A", "rms B", "rms R", "first values", "Q4_K/Q5_K/F16", "error added"):
        assert sec in text, sec
    path = save_trace(s, tmp_path / "t.qtrace", tensor_budget_bytes=0)
    assert render_report(load_trace(path)) == text
    assert render_report(open_replay(path)) == text
    assert render_report(s) == text
    assert render_report(_run(paths, {"A": "A", "B": "B", "R": "R"})) == text  # deterministic
    # the flips the report states are the session's
    for rec in s.history:
        if rec.logits:
            flipped = bool(rec.logits["A~B"]["flip_positions"])
            pos = rec.positions[-1]
            line = next(x for x in text.splitlines() if x.startswith(f"- Pass {rec.step}, position {pos}:"))
            assert ("**top-1 flipped**" in line) == flipped
            assert ("no flip" in line) == (not flipped)


def test_identical_sides(paths):
    text = render_report(_run(paths, {"A": "A", "B": "twin"}, decode=0))
    assert "no flip" in text and "flipped" not in text
    assert "| rel_rms > 0.01 | never |" in text and "| sqnr < 20 dB | never |" in text
    assert "No op adds a measurable error." in text and "Closer to R" not in text
    assert "**Ops adding the most error:** none" in text
    assert "| `l_out-1` | 0 | inf | 1.000000 |" in text


def _swap_top2(minus_noise: float):
    """B's last logits row: A's top-1 and top-2 swapped; every other logit lowered by |N(0, m*s)|."""
    def f(res):
        x = res.computed if res.computed is not None else res.value
        x = x.copy()
        row = x[-1]
        i, j = np.argsort(-row, kind="stable")[:2]
        m = row[i] - row[j]
        rest = np.ones(row.size, bool)
        rest[[i, j]] = False
        noise = np.abs(np.random.default_rng(0).standard_normal(row.size)) * m * minus_noise
        row[rest] -= noise[rest]
        row[i], row[j] = row[j], row[i]
        return x
    return f


@pytest.mark.parametrize("noise, verdict", [(0.0, "**decisive**"), (1.0, "**near-tie**")])
def test_flip_weighed_against_logit_error(paths, engines_with, noise, verdict):
    engines_with({paths["twin"]: {"result_output": _swap_top2(noise)}})
    s = _run(paths, {"A": "A", "B": "twin"}, decode=0)
    assert s.final()["flip_positions"] == [5]  # absolute token position
    text = render_report(s)
    line = next(x for x in text.splitlines() if x.startswith("- Pass 0, position 5:"))
    assert "**top-1 flipped**" in line and verdict in line, line
    assert "A's top-2 margin" in line and "logit error rms" in line
    summary = text.split("## Error through the layers")[0]
    assert "**Verdict:** A and B pick **different next tokens** at 1 position(s) in 1 of 1 pass(es)" in summary
    assert "- **The flip:** " + line[2:] in summary


def test_nan_is_shown_not_fatal(paths, engines_with, tmp_path):
    def inject(res):
        x = res.value.copy()
        x[-1, 3] = np.nan
        return x
    engines_with({paths["A"]: {"ffn_out-0": inject}})
    s = _run(paths, {"A": "A", "B": "B", "R": "R"})
    text = render_report(s)
    assert "**Non-finite values** first appear at `ffn_out-0` (pass 0): A: 1 NaN, 0 Inf" in text
    assert "NaN" in text.split("##### Layer 1")[1]
    assert "- **NaN/Inf:** first at `ffn_out-0` (pass 0): A: 1 NaN, 0 Inf." in text.split("## Error through")[0]
    path = save_trace(s, tmp_path / "nan.qtrace")
    assert render_report(load_trace(path)) == text


def test_partial_and_empty_sessions(paths):
    s = open_session({"A": paths["A"], "B": paths["B"]}, TOKENS)
    assert "No ops recorded yet." in render_report(s)
    s.run_to("ffn_up-0")
    text = render_report(s)
    assert "No logits recorded yet." in text and "#### Layer 0" in text


def test_number_formatting():
    assert [num(None), num(float("nan")), num(float("inf")), num(-float("inf")), num(True), num(3)] == \
        ["—", "NaN", "inf", "-inf", "yes", "3"]
    assert num(0.000123456) == "0.0001235" and num(12.0, ".1f") == "12.0"
    assert pct(1.1, 1.0) == "+10.00%" and pct(0.0, 0.0) == "+0.00%" and pct(1.0, 0.0) == "+inf"
    assert pct(float("nan"), 1.0) == "NaN" and pct(None, 1.0) == "—"


def test_long_models_collapse_layers(paths, monkeypatch, tmp_path):
    import qdbg.report.tables as rep
    from qdbg.report import write_report

    monkeypatch.setattr(rep, "COLLAPSE_LAYERS", 2)
    s = _run(paths, {"A": "A", "B": "B"}, decode=0)
    text = render_report(s)
    assert "<details open><summary>Embedding: 1 ops" in text  # inp_embd crosses rel_rms > 0.01
    assert "##### Layer 0" not in text and "<summary>Layer 1: " in text
    p = write_report(s, tmp_path / "r.md", plots=False)
    assert p.read_text(encoding="utf-8") == render_report(s, no_images="not asked for.")
    assert "No images: not asked for." in p.read_text(encoding="utf-8")


def test_any_valid_trace_renders(paths, tmp_path):
    """Every metric replaced by None/NaN/±inf/0 (all valid in a trace): the report still renders."""
    import io
    import zipfile

    from qdbg.trace import dumps, loads

    s = _run(paths, {"A": "A", "B": "B", "R": "R"}, decode=0)
    src = save_trace(s, tmp_path / "t.qtrace", tensor_budget_bytes=0)
    with zipfile.ZipFile(src) as z:
        m = loads(np.load(io.BytesIO(z.read("manifest.npy"))).tobytes())
    rng = np.random.default_rng(1)
    opt = ("rel_rms", "sqnr", "cos", "max_abs", "mean_abs", "max_rel", "amp", "rms", "min", "max", "mean",
           "std", "margin", "entropy", "kl_ab", "kl_ba", "js", "prob")
    choices = [None, float("nan"), float("inf"), -float("inf"), 0.0, -1.0]

    def scramble(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k in opt or k == "logit":
                    x[k] = choices[rng.integers(1 if k == "logit" else 0, len(choices))]
                else:
                    scramble(v)
        elif isinstance(x, list):
            for v in x:
                scramble(v)

    for r in m["records"]:
        scramble([r["stats"], r["pairs"], r["logits"]])
    out = tmp_path / "s.qtrace"
    with zipfile.ZipFile(out, "w") as z:
        z.comment = f"qdbg-trace {qtrace.VERSION}".encode()
        b = io.BytesIO()
        np.lib.format.write_array(b, np.frombuffer(dumps(m), np.uint8))
        z.writestr("manifest.npy", b.getvalue())
    text = render_report(load_trace(out))
    assert "NaN" in text and "inf" in text
