"""Record llama.cpp's quantization with `--tensor-type` overrides into tests/golden/requant_overrides.json.

For each case: writes a synthetic F32 model with qdbg.synth, quantizes it with llama.cpp's own
`llama_model_quantize` (params.tt_overrides = the case's {pattern, type} list, as llama-quantize
fills it from `--tensor-type` / `--tensor-type-file`; patterns already lower case, as
llama-quantize makes them) and stores per tensor (type name, sha256 of the raw bytes).
tests/test_requant_overrides.py rebuilds each file with `qdbg.requant.requantize(overrides=...)`.

Needs llama_cpp (llama-cpp-python 0.3.36); tests never import it. Usage:
    python tools/record_requant_overrides.py [--out tests/golden/requant_overrides.json]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader

from qdbg.quant.mixes import ftype_info
from qdbg.quant.overrides import parse_tensor_type
from qdbg.synth import SynthSpec, write_gguf

DEEP = SynthSpec(arch="llama", n_layer=12, n_ff=256, n_head=2, n_head_kv=1, head_dim=128,
                 n_vocab=512, seed=3)
ODD = SynthSpec(arch="llama", n_embd=320, n_ff=384, n_head=4, n_head_kv=1, n_vocab=512, seed=1)
SMALL = SynthSpec(arch="llama", n_ff=256, n_vocab=512)
QWEN2 = SynthSpec(arch="qwen2", n_ff=256, n_vocab=512)

# name: (spec, ftype, [PATTERN=TYPE ...]) -- what each case exercises is in its comment
CASES: dict[str, tuple[SynthSpec, str, list[str]]] = {
    # one attn_v overridden: llama.cpp's attn_v counter skips it, so later layers shift
    "deep_attn_v0": (DEEP, "Q4_K_M", ["blk.0.attn_v.weight=q5_K"]),
    # ffn_down of two layers by a regex: the ffn_down counter skips both
    "deep_ffn_down_regex": (DEEP, "Q4_K_M", [r"blk\.(1|2)\.ffn_down=q4_0"]),
    # the first matching pattern wins; a broad pattern catches attn_k/attn_v/attn_output, not norms
    "deep_first_match": (DEEP, "Q5_K_M", ["attn_q=q8_0", "attn=bf16", "output=f16", "token_embd=f32"]),
    # rows of 320 / 384: the overridden type still falls back (Q4_K -> Q5_0, Q6_K -> Q8_0, Q2_K -> Q4_0)
    "odd_fallback": (ODD, "Q4_K_M", ["ffn_down=q4_K", "attn_q=q6_K", "token_embd=q2_K", "ffn_up=q3_K"]),
    # a pure file type still takes overrides
    "pure_q4_0": (SMALL, "Q4_0", ["ffn_up=q6_K", r"blk\.1\.attn_k=q3_K", "output=q5_1"]),
    # qwen2: biases are never quantized, whatever matches them
    "qwen2_q5_k_s": (QWEN2, "Q5_K_S", ["attn_v=q8_0", "attn_q=q4_1", "bias=q8_0"]),
}


def read_tensors(path: Path) -> dict[str, list[str]]:
    r = GGUFReader(path)
    return {t.name: [t.tensor_type.name, hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()]
            for t in r.tensors}


def quantize(llama_cpp, src: Path, dst: Path, ftype: str, overrides: list[str]) -> None:
    info = ftype_info(ftype)
    opts = [parse_tensor_type(a) for a in overrides]
    arr = (llama_cpp.llama_model_tensor_override * (len(opts) + 1))()
    keep = [o.pattern.encode() for o in opts]
    for i, (o, pat) in enumerate(zip(opts, keep)):
        arr[i].pattern = pat
        arr[i].type = int(o.qtype)
    arr[len(opts)].pattern = None  # terminator
    arr[len(opts)].type = 39  # GGML_TYPE_COUNT (unused past the null pattern)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = info.llama_ftype
    params.pure = info.pure
    params.nthread = 2
    params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent.parent / "tests/golden/requant_overrides.json")
    args = ap.parse_args(argv)
    import llama_cpp  # recording only

    doc: dict = {"llama_cpp_python": llama_cpp.__version__, "cases": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, (spec, ftype, ovs) in CASES.items():
            src = write_gguf(spec, tmp / f"{name}-src.gguf", "F32")
            dst = tmp / f"{name}.gguf"
            quantize(llama_cpp, src, dst, ftype, ovs)
            doc["cases"][name] = {"spec": spec.to_dict(), "ftype": ftype, "overrides": ovs,
                                  "tensors": read_tensors(dst)}
            print(f"{name}: {len(doc['cases'][name]['tensors'])} tensors", file=sys.stderr)
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
