"""Choose and record the synthetic "one tensor decides the flip" case of tests/test_bisect.py.

The pair: SRC = a synthetic F32 llama (qdbg.synth), B = SRC as Q5_K_M, A = SRC as Q4_K_M with one
tensor X damaged to Q2_K (`--tensor-type X=q2_K`). Searched here, once (tests never search): a
seed, a token prompt and X such that, at the prompt's last position in exact mode,
  - A's top-1 differs from B's,
  - plain Q4_K_M (X undamaged) agrees with B, and
  - Q4_K_M with X at B's type (what bisect's recipe builds) agrees with B.
Then it runs qdbg.bisect on the pair to check it names X, and, when llama_cpp (llama-cpp-python)
is installed, records llama.cpp's own top-1 for A, B and the recipe-built file
(tools/llama_top1.py). Writes tests/golden/bisect_case.json.

Usage: python tools/make_bisect_case.py [--out tests/golden/bisect_case.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from qdbg.bisect import bisect, recipe_text
from qdbg.engine.forward import Engine
from qdbg.model import Model
from qdbg.quant.overrides import parse_tensor_type
from qdbg.requant import requantize
from qdbg.synth import SynthCache, SynthSpec, write_gguf

HERE = Path(__file__).resolve().parent
DAMAGED = ("ffn_up", "ffn_gate", "attn_output", "attn_q")  # not attn_v/ffn_down: no counter shift


def top1(model: Model, tokens: list[int], overrides: dict | None = None) -> int:
    return int(np.argmax(Engine(model, "exact", weight_overrides=overrides).logits(tokens)[-1]))


def search(tmp: Path) -> dict:
    rng = np.random.default_rng(7)
    for seed in range(20):
        spec = SynthSpec(arch="llama", n_ff=256, n_vocab=512, seed=seed)
        cache = SynthCache(spec)
        files = {ft: write_gguf(spec, tmp / f"s{seed}-{ft}.gguf", ft, cache=cache)
                 for ft in ("Q4_K_M", "Q5_K_M", "Q2_K")}
        base, b, q2 = (Model(files[f]) for f in ("Q4_K_M", "Q5_K_M", "Q2_K"))
        names = [f"blk.{i}.{t}.weight" for i in range(spec.n_layer) for t in DAMAGED]
        for _ in range(40):
            toks = [1] + [int(t) for t in rng.integers(3, spec.n_vocab, size=7)]
            tb = top1(b, toks)
            if top1(base, toks) != tb:
                continue
            for x in names:
                if top1(base, toks, {x: q2.weight(x)}) != tb and top1(base, toks, {x: b.weight(x)}) == tb:
                    return {"spec": spec.to_dict(), "tensor": x, "damage": "Q2_K", "tokens": toks,
                            "b_type": b.tensors[x].qtype.name}
    raise SystemExit("no case found")


def llama_top1(path: Path, tokens: list[int]) -> int:
    out = subprocess.run([sys.executable, str(HERE / "llama_top1.py"), str(path), ",".join(map(str, tokens))],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE.parent / "tests/golden/bisect_case.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        case = search(tmp)
        spec = SynthSpec.from_dict(case["spec"])
        src = write_gguf(spec, tmp / "src.gguf", "F32")
        a = requantize(src, tmp / "A.gguf", "Q4_K_M",
                       overrides=[parse_tensor_type(f"{case['tensor']}={case['damage']}")])
        b = requantize(src, tmp / "B.gguf", "Q5_K_M")
        res = bisect(Model(a), Model(b), [case["tokens"]], log=lambda s: print(s, file=sys.stderr))
        assert res.met and [u.tensor for u in res.upgrades] == [case["tensor"]], res.to_json()
        (tmp / "recipe.txt").write_text(recipe_text(res.recipe))
        fixed = requantize(src, tmp / "fixed.gguf", res.ftype,
                           overrides=[parse_tensor_type(str(o)) for o in res.recipe])
        case["qdbg_top1"] = {k: top1(Model(p), case["tokens"]) for k, p in
                             (("A", a), ("B", b), ("fixed", fixed))}
        case["recipe"] = [str(o) for o in res.recipe]
        case["ftype"] = res.ftype
        if importlib.util.find_spec("llama_cpp") is not None:
            case["llama_cpp_top1"] = {k: llama_top1(p, case["tokens"]) for k, p in
                                      (("A", a), ("B", b), ("fixed", fixed))}
    args.out.write_text(json.dumps(case, indent=1, sort_keys=True) + "\n")
    print(json.dumps(case, sort_keys=True), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
