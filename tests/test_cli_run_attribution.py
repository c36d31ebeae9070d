"""`qdbg run` with attribution and --noise: local/inherited in the stops and findings.born, the
noise floor in the flips and the final verdict with its numbers, in JSON and in the text output."""

from __future__ import annotations

import json

from qdbg.cli import main
from qdbg.findings import WITHIN

TOKENS = "1,17,42,99,300,7"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_json_attribution_noise_verdict(capsys, synth_model):
    a, b = (str(synth_model("llama", ft)) for ft in ("Q4_K_M", "Q5_K_M"))
    rc, out, err = run(capsys, "run", a, b, "--tokens", TOKENS, "--noise", "--break", "kind == 'matmul' and local > 0.01",
                       "--patch", "blk.0.attn_v.weight=B", "--json")
    assert rc == 0, err
    d = json.loads(out)
    st = d["stops"][0]
    assert st["metrics"]["local"] > 0.01 and st["metrics"]["inherited"] is not None and "noise" in st["metrics"]
    born = d["findings"]["born"]
    assert born["ops"] and born["ops"][0]["local"] >= born["ops"][-1]["local"]
    assert "blk.0.attn_v.weight" not in [t["weight"] for t in born["tensors"][:1]]  # patched: it adds nothing
    v = d["verdict"]
    assert v["noise_floor"] is not None and v["noise_shadows"] == ["flash_attn=on", "ubatch=3"]
    assert v["verdict"] in ("decisive", WITHIN, "near-tie", "safe", "fragile") and v["because"]
    assert d["interventions"][0]["label"] == "patch blk.0.attn_v.weight: A<-B"
    for f in d["flips"]:
        assert f["noise_floor"] is not None and f["because"].startswith(f["verdict"])
    rc, text, _ = run(capsys, "run", a, b, "--tokens", TOKENS, "--noise")
    assert "where the divergence is born" in text and "verdict (pass 0, position 5):" in text and "floor" in text


def test_bad_patch_is_one_line(capsys, synth_model):
    a, b = (str(synth_model("llama", ft)) for ft in ("Q4_K_M", "Q5_K_M"))
    rc, out, err = run(capsys, "run", a, b, "--tokens", TOKENS, "--patch", "blk.0.attn_v.weight=Q")
    assert rc == 2 and "--patch wants GLOB=SIDE" in err and "Traceback" not in err


def test_no_attribution_skips_local_and_inherited(capsys, synth_model):
    """--no-attribution: no op is recomputed on B's input, so local/inherited are absent and
    'where the divergence is born' is empty (the rest of the run is unchanged)."""
    a, b = (str(synth_model("llama", ft)) for ft in ("Q4_K_M", "Q5_K_M"))
    rc, out, err = run(capsys, "run", a, b, "--tokens", TOKENS, "--json", "--no-attribution",
                       "--break", "kind == 'matmul'")
    assert rc == 0, err
    d = json.loads(out)
    assert d["stops"] and all(st["metrics"]["local"] is None and st["metrics"]["inherited"] is None
                              for st in d["stops"])
    assert d["findings"]["born"]["ops"] == [] and d["findings"]["born"]["tensors"] == []
    rc, with_attr, _ = run(capsys, "run", a, b, "--tokens", TOKENS, "--json")
    assert json.loads(with_attr)["final"] == d["final"]
