"""`qdbg run` over the redesigned session: --scope, every flip listed, R's view, --max-stops,
--break-every, --patch/--resync, and targets that name nothing failing before any op runs."""

from __future__ import annotations

import json

from qdbg.cli import main

TOKENS = "1,17,42,99,300,7"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _paths(synth_model):
    return [str(synth_model("llama", ft)) for ft in ("Q4_K_M", "Q5_K_M", "F16")]


def test_run_scope_all_lists_every_flip_with_r(capsys, synth_model):
    a, b, r = _paths(synth_model)
    rc, out, _ = run(capsys, "run", a, b, "--ref", r, "--tokens", TOKENS, "--scope", "all", "--gen", "1", "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["scope"] == "all" and d["text"] is not None and len(d["tokens"]) == 7
    flips = d["flips"]
    assert flips and all(f["flip"] for f in flips)
    assert {(f["step"], f["pos"]) for f in flips} >= {(0, p) for p in (1, 4, 5)}  # not only the last position
    assert all(f["margin_a"] is not None and f["verdict"] in ("near-tie", "decisive") for f in flips)
    assert d["final"]["r_top_k"] and set(d["final"]["A~R"]) >= {"kl", "top1_agree", "rel_rms"}
    assert "B~R" in d["final"] and d["findings"]["closer_to_r"]["n_ops"] > 0
    rc, text, _ = run(capsys, "run", a, b, "--ref", r, "--tokens", TOKENS, "--scope", "all")
    assert "top-1 flips" in text and "R token" in text and "A~R: top-1" in text and "scope: all" in text


def test_max_stops_and_break_every(capsys, synth_model):
    a, b, _ = _paths(synth_model)
    rc, out, _ = run(capsys, "run", a, b, "--tokens", TOKENS, "--break-every", "rel_rms > 0.01",
                     "--max-stops", "4", "--json")
    d = json.loads(out)
    assert rc == 0 and len(d["stops"]) == 4 and d["breakpoints"][0]["every"] is True
    rc, out, _ = run(capsys, "run", a, b, "--tokens", TOKENS, "--break", "rel_rms > 0.01", "--json")
    edge = json.loads(out)["stops"]
    rc, out, _ = run(capsys, "run", a, b, "--tokens", TOKENS, "--break-every", "rel_rms > 0.01", "--json")
    assert 0 < len(edge) < len(json.loads(out)["stops"])


def test_bad_targets_and_interventions_are_one_line_errors(capsys, synth_model):
    a, b, _ = _paths(synth_model)
    for extra, msg in ((["--break", 'op == "ffn_upp-1"'], "no op is named 'ffn_upp-1'"),
                       (["--break", 'kind == "matmull"'], "no op kind matches"),
                       (["--patch", "blk.1.*"], "GLOB=SIDE"),
                       (["--patch", "blk.1.*=R"], "no side R"),
                       (["--resync", "zzz"], "no op matches"),
                       (["--scope", "first"], "scope must be"),
                       (["--max-stops", "0"], "--max-stops")):
        rc, out, err = run(capsys, "run", a, b, "--tokens", TOKENS, *extra)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1 and out == ""


def test_patch_and_resync_are_labelled(capsys, synth_model):
    a, b, _ = _paths(synth_model)
    rc, out, _ = run(capsys, "run", a, b, "--tokens", TOKENS, "--patch", "*=B", "--json")
    d = json.loads(out)
    assert rc == 0 and d["interventions"][0]["label"] == "patch *: A<-B"
    assert d["final"]["kl_ab"] == 0.0 and d["flips"] == []   # A computed with B's weights is B
    rc, out, _ = run(capsys, "run", a, b, "--tokens", TOKENS, "--resync", "l_out-*")
    assert "intervention: resync l_out-*: A<-B" in out
