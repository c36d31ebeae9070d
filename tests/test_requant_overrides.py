"""`--tensor-type` overrides: qdbg's quantize against llama.cpp's, byte for byte.

tests/golden/requant_overrides.json holds, per case, the type and sha256 of every tensor
llama.cpp's `llama_model_quantize` wrote with the case's overrides (tools/record_requant_overrides.py);
qdbg rebuilds the same F32 source with qdbg.synth and requantizes it with the same overrides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from qdbg.cli import main
from qdbg.errors import UsageError
from qdbg.gguf_file import GGUFFile
from qdbg.quant.mixes import tensor_types
from qdbg.quant.overrides import (format_tensor_type, match_override, parse_tensor_type,
                                  parse_tensor_type_file)
from qdbg.requant import requantize
from qdbg.synth import SynthSpec, tensor_shapes, write_gguf

GOLDEN = json.loads((Path(__file__).parent / "golden" / "requant_overrides.json").read_text())
CASES = GOLDEN["cases"]


def _hashes(path: Path) -> dict[str, list[str]]:
    with GGUFFile(path) as f:
        return {n: [t.qtype.name, hashlib.sha256(np.ascontiguousarray(f.raw(n)).tobytes()).hexdigest()]
                for n, t in f.tensors.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_requantize_with_overrides_matches_llama_cpp(tmp_path: Path, case: str) -> None:
    c = CASES[case]
    spec = SynthSpec.from_dict(c["spec"])
    src = write_gguf(spec, tmp_path / "src.gguf", "F32")
    ovs = [parse_tensor_type(a) for a in c["overrides"]]
    out = requantize(src, tmp_path / "out.gguf", c["ftype"], overrides=ovs)
    assert _hashes(out) == c["tensors"]
    # the plan alone (no quantizing) gives the same types
    plan = tensor_types(tensor_shapes(spec), c["ftype"], spec.n_layer, n_head=spec.n_head,
                        n_head_kv=spec.n_head_kv, arch=spec.arch, overrides=ovs)
    assert {n: t.name for n, t in plan.items()} == {n: v[0] for n, v in c["tensors"].items()}


def test_golden_cases_exercise_the_rules() -> None:
    """The recorded cases really show the counter shift, first-match order and fallbacks."""
    deep = CASES["deep_attn_v0"]["tensors"]
    spec = SynthSpec.from_dict(CASES["deep_attn_v0"]["spec"])
    plain = tensor_types(tensor_shapes(spec), "Q4_K_M", spec.n_layer, n_head=spec.n_head,
                         n_head_kv=spec.n_head_kv)
    shifted = [n for n in plain if n != "blk.0.attn_v.weight" and plain[n].name != deep[n][0]]
    assert shifted and all("attn_v" in n for n in shifted)  # the skipped counter moved later layers
    fm = CASES["deep_first_match"]["tensors"]
    assert fm["blk.0.attn_q.weight"][0] == "Q8_0" and fm["blk.0.attn_k.weight"][0] == "BF16"
    assert fm["blk.0.attn_norm.weight"][0] == "F32"  # norms are never quantized
    odd = CASES["odd_fallback"]["tensors"]
    assert odd["blk.0.ffn_down.weight"][0] == "Q5_0" and odd["blk.0.attn_q.weight"][0] == "Q8_0"
    assert odd["token_embd.weight"][0] == "Q4_0"


def test_parse_rules() -> None:
    o = parse_tensor_type("Blk.1.ATTN_V=Q6_k")
    assert o.pattern == "blk.1.attn_v" and o.qtype == Q.Q6_K  # pattern lowercased, type any case
    assert str(o) == "blk.1.attn_v=q6_K"
    assert format_tensor_type("x", Q.BF16) == "x=bf16"
    assert [str(x) for x in parse_tensor_type_file(" a=q8_0\n\tb=F16  c=q4_K\n")] == \
        ["a=q8_0", "b=f16", "c=q4_K"]
    assert match_override("blk.3.attn_q.weight", parse_tensor_type_file("attn_k=q8_0 attn=f16 q=q4_0")) == Q.F16
    assert match_override("blk.3.ffn_up.weight", [parse_tensor_type("attn=f16")]) is None
    for bad, msg in (("attn_q", "PATTERN=TYPE"), ("=q8_0", "missing tensor name"),
                     ("attn_q=", "missing quantization type"), ("attn_q=q9_9", "invalid ggml type"),
                     ("(attn=q8_0", "not a valid regular expression")):
        with pytest.raises(UsageError, match=msg):
            parse_tensor_type(bad)


def test_cli_quantize_with_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    c = CASES["deep_first_match"]
    spec = SynthSpec.from_dict(c["spec"])
    src = write_gguf(spec, tmp_path / "src.gguf", "F32")
    # the first two on the command line, the rest from a file: order is kept across both
    (tmp_path / "types.txt").write_text("\n".join(c["overrides"][2:]) + "\n")
    argv = ["quantize", str(src), str(tmp_path / "out.gguf"), c["ftype"]]
    argv += ["--tensor-type", c["overrides"][0].upper(), "--tensor-type", c["overrides"][1],
             "--tensor-type-file", str(tmp_path / "types.txt")]
    assert main(argv) == 0
    assert _hashes(tmp_path / "out.gguf") == c["tensors"]


@pytest.mark.parametrize("argv_tail, msg", [
    (["Q4_K_M", "--tensor-type", "attn_q"], "PATTERN=TYPE"),
    (["Q4_K_M", "--tensor-type-file", "/nonexistent/types.txt"], "types.txt"),
    (["F16", "--tensor-type", "attn_q=q8_0"], "needs a quantized file type"),
    (["Q4_K_M", "--tensor-type", "attn_q=iq2_xxs"], "IQ2_XXS"),
])
def test_cli_quantize_override_errors(tmp_path: Path, capsys: pytest.CaptureFixture,
                                      argv_tail: list[str], msg: str) -> None:
    src = write_gguf(SynthSpec(arch="llama", n_ff=256, n_vocab=512), tmp_path / "src.gguf", "F32")
    assert main(["quantize", str(src), str(tmp_path / "out.gguf"), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.gguf").exists()
