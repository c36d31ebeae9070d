"""qdbg bisect: the synthetic pair where one tensor decides the flip (tests/golden/bisect_case.json,
chosen once by tools/make_bisect_case.py), the recipe, and the file `quantize` builds from it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qdbg.bisect import parse_target, plan_recipe
from qdbg.cli import main
from qdbg.engine.forward import Engine
from qdbg.errors import UsageError
from qdbg.model import Model
from qdbg.quant import row_bytes
from qdbg.quant.mixes import tensor_types
from qdbg.quant.overrides import parse_tensor_type
from qdbg.requant import requantize
from qdbg.synth import SynthSpec, write_gguf
from gguf import GGMLQuantizationType as Q

ROOT = Path(__file__).resolve().parent.parent
CASE = json.loads((ROOT / "tests" / "golden" / "bisect_case.json").read_text())


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """SRC (F32), A = Q4_K_M with the case's tensor damaged, B = Q5_K_M, as qdbg quantize makes them."""
    d = tmp_path_factory.mktemp("bisect")
    src = write_gguf(SynthSpec.from_dict(CASE["spec"]), d / "src.gguf", "F32")
    a = requantize(src, d / "A.gguf", "Q4_K_M",
                   overrides=[parse_tensor_type(f"{CASE['tensor']}={CASE['damage']}")])
    b = requantize(src, d / "B.gguf", "Q5_K_M")
    return {"src": src, "A": a, "B": b, "dir": d}


def _top1(path: Path) -> int:
    return int(np.argmax(Engine(Model(path), "exact").logits(CASE["tokens"])[-1]))


def _bisect_json(pair, capsys, *extra: str) -> tuple[int, dict]:
    toks = ",".join(map(str, CASE["tokens"]))
    rc = main(["bisect", str(pair["A"]), str(pair["B"]), "--tokens", toks, "--json", *extra])
    return rc, json.loads(capsys.readouterr().out)


def test_bisect_names_the_tensor_and_the_recipe_fixes_the_file(pair, capsys) -> None:
    recipe = pair["dir"] / "recipe.txt"
    rc, doc = _bisect_json(pair, capsys, "--recipe-out", str(recipe))
    x = CASE["tensor"]
    assert rc == 0 and doc["met"] is True
    shape = Model(pair["A"]).tensors[x].shape
    added = shape[0] * (row_bytes(Q.Q5_K, shape[1]) - row_bytes(Q.Q2_K, shape[1]))
    assert doc["upgrades"] == [{"tensor": x, "from": "Q2_K", "to": CASE["b_type"], "bytes_added": added,
                                "local": doc["upgrades"][0]["local"], "patched": False}]
    assert doc["bytes_added"] == added
    assert doc["fraction_added"] == pytest.approx(added / pair["A"].stat().st_size)
    assert doc["before"]["flips"] == [0] and doc["after"]["flips"] == []
    assert doc["before"]["top1_b"] == [CASE["llama_cpp_top1"]["B"]]
    assert doc["before"]["top1_a"] == [CASE["llama_cpp_top1"]["A"]]
    assert doc["after"]["top1_a"] == [CASE["llama_cpp_top1"]["B"]]
    assert doc["tensor_type_args"] == ["--tensor-type", f"{x}=q5_K"] and doc["ftype"] == "Q4_K_M"
    assert doc["trials"] == 1  # the damaged tensor has the largest local error: tried first
    assert recipe.read_text() == f"{x}=q5_K\n"
    # the file the recipe builds picks B's token, as llama.cpp does (golden, recorded with the wheel)
    fixed = pair["dir"] / "fixed.gguf"
    assert main(["quantize", str(pair["src"]), str(fixed), "Q4_K_M", "--tensor-type-file", str(recipe)]) == 0
    capsys.readouterr()
    assert _top1(fixed) == CASE["llama_cpp_top1"]["fixed"] == CASE["llama_cpp_top1"]["B"] == _top1(pair["B"])
    assert _top1(pair["A"]) == CASE["llama_cpp_top1"]["A"] != CASE["llama_cpp_top1"]["B"]
    # and only the named tensor differs from A
    ma, mf = Model(pair["A"]), Model(fixed)
    assert [n for n in ma.tensors if ma.tensors[n].qtype != mf.tensors[n].qtype] == [x]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_llama_cpp_picks_b_token_on_the_fixed_file(pair, capsys) -> None:
    fixed = pair["dir"] / "fixed-llama.gguf"
    recipe = pair["dir"] / "recipe-llama.txt"
    assert _bisect_json(pair, capsys, "--recipe-out", str(recipe))[0] == 0
    assert main(["quantize", str(pair["src"]), str(fixed), "Q4_K_M", "--tensor-type-file", str(recipe)]) == 0

    def llama_top1(p: Path) -> int:
        out = subprocess.run([sys.executable, str(ROOT / "tools" / "llama_top1.py"), str(p),
                              ",".join(map(str, CASE["tokens"]))], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[0])

    assert llama_top1(fixed) == llama_top1(pair["B"]) != llama_top1(pair["A"])


def test_text_output(pair, capsys) -> None:
    toks = ",".join(map(str, CASE["tokens"]))
    assert main(["bisect", str(pair["A"]), str(pair["B"]), "--tokens", toks]) == 0
    out = capsys.readouterr().out
    assert "target flip: met after 1 trials" in out
    assert f"{CASE['tensor']}   Q2_K -> Q5_K" in out
    assert f"llama-quantize --tensor-type {CASE['tensor']}=q5_K SRC.gguf A-fixed.gguf Q4_K_M" in out


def test_kl_target_and_nothing_to_do(pair, capsys) -> None:
    rc, doc = _bisect_json(pair, capsys, "--target", "kl<1e-9", "--max-trials", "2")
    assert rc == 1 and doc["met"] is False and doc["tensor_type_args"] == []
    assert doc["trials"] == 2 and doc["after"]["kl_ba_mean"] > 1e-9
    assert "stopped after --max-trials 2" in doc["notes"]
    half = doc["before"]["kl_ba_mean"] / 2
    rc, doc = _bisect_json(pair, capsys, "--target", f"kl<{half}")
    assert rc == 0 and doc["met"] and doc["after"]["kl_ba_mean"] < half
    n = len(doc["upgrades"])
    assert n >= 1 and doc["trials"] >= n  # greedy trials, then one prune trial per kept tensor
    assert doc["before"]["kl_ba_mean"] > half
    toks = ",".join(map(str, CASE["tokens"]))
    assert main(["bisect", str(pair["B"]), str(pair["B"]), "--tokens", toks, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["met"] and doc["upgrades"] == [] and doc["trials"] == 0


def test_recipe_pins_tensors_the_counters_would_move(synth_model) -> None:
    """Overriding blk.0.attn_v skips llama.cpp's attn_v counter: the recipe pins the rest."""
    m = Model(synth_model("llama", "Q4_K_M", n_layer=12, n_ff=256, n_vocab=512, n_head=2, n_head_kv=1,
                          head_dim=128))
    notes: list[str] = []
    ftype, recipe = plan_recipe(m, {"blk.0.attn_v.weight": Q.Q8_0}, notes)
    assert ftype == "Q4_K_M" and not notes and len(recipe) > 1
    assert str(recipe[0]) == "blk.0.attn_v.weight=q8_0"
    shapes = {n: tuple(t.shape) for n, t in m.tensors.items()}
    plan = tensor_types(shapes, "Q4_K_M", 12, n_head=2, n_head_kv=1, overrides=recipe)
    want = {n: t.qtype for n, t in m.tensors.items()} | {"blk.0.attn_v.weight": Q.Q8_0}
    assert plan == want


def test_parse_target() -> None:
    assert str(parse_target("flip")) == "flip" and parse_target(" kl < 0.05 ").threshold == 0.05
    for bad in ("kl<0", "kl<x", "kl>1", "top1"):
        with pytest.raises(UsageError, match="--target"):
            parse_target(bad)


@pytest.mark.parametrize("extra, msg", [
    (["--target", "kl<-1"], "--target"),
    (["--from", "R"], "--from R needs --ref"),
    (["--max-trials", "0"], "--max-trials"),
])
def test_usage_errors(pair, capsys, extra: list[str], msg: str) -> None:
    rc = main(["bisect", str(pair["A"]), str(pair["B"]), "--tokens", "1,2", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_patch_starts_from_a_patched_a_and_stays_in_the_recipe(pair, capsys) -> None:
    """--patch X=B: A runs with B's X from the start (here that alone fixes the flip, so no trial
    is needed) and X is an upgrade of the recipe, marked as patched, never pruned."""
    x = CASE["tensor"]
    rc, doc = _bisect_json(pair, capsys, "--patch", f"{x}=B")
    assert rc == 0 and doc["met"] is True and doc["trials"] == 0
    assert doc["before"]["flips"] == [] and doc["after"]["flips"] == []
    assert [(u["tensor"], u["patched"], u["local"]) for u in doc["upgrades"]] == [(x, True, None)]
    assert any(a.startswith(f"--tensor-type {x}") or x in a for a in doc["tensor_type_args"])


@pytest.mark.parametrize("patch, msg", [("blk.*.nothing.weight=B", "no matrix of A matches"),
                                        ("blk.0.ffn_up.weight=R", "patch from the same side")])
def test_patch_errors(pair, capsys, patch: str, msg: str) -> None:
    toks = ",".join(map(str, CASE["tokens"]))
    assert main(["bisect", str(pair["A"]), str(pair["B"]), "--tokens", toks, "--patch", patch]) == 2
    assert msg in capsys.readouterr().err


def test_bisect_reports_progress(pair) -> None:
    """bisect tells its progress callback about the ranking and each trial, in order."""
    from qdbg.bisect import Target, bisect

    calls: list[tuple[str, int, int]] = []
    res = bisect(Model(pair["A"]), Model(pair["B"]), [CASE["tokens"]], target=Target("flip"),
                 progress=lambda what, done, total: calls.append((what, done, total)))
    assert res.met and res.trials >= 1
    assert calls[0][0].startswith("ranking tensors by local error")
    trials = [c for c in calls if c[0].startswith("trial ")]
    assert len(trials) >= 1 and trials[0][0] == f"trial 1: +{CASE['tensor']}" and trials[0][1] == 0
    assert [c[1] for c in trials] == sorted(c[1] for c in trials)
