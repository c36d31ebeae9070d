"""Record llama.cpp's quantization of the synthetic models into tests/golden/synth/<case>.json.

For each case (a SynthSpec), writes the F32 synthetic model with qdbg.synth, quantizes it with
llama.cpp (`llama_model_quantize`, default params, `pure` for plain type names) into every ftype
of qdbg.quant.mixes.FTYPES and into llama.cpp's own legacy mixes (MOSTLY_Q4_0 ... without
--pure), and stores per tensor (type name, sha256 of the raw tensor bytes) plus the scalar
metadata. A quantization llama.cpp refuses is stored as {"error": ...}. Also stores llama.cpp's
tokenization of a few sentences with the synthetic vocab.

Needs llama_cpp (llama-cpp-python); tests never import it. Usage:
    python tools/record_synth_golden.py [--out tests/golden/synth] [case ...]
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
from gguf import GGUFReader, GGUFValueType

from qdbg.quant.mixes import FTYPES, LLAMA_MIXES
from qdbg.synth import SynthSpec, write_gguf

# Cases: the four archs at default size (row lengths multiples of 256), plus odd shapes that
# exercise llama.cpp's fallbacks and a deep model for the layer-counter rules.
CASES: dict[str, SynthSpec] = {
    # smaller than the SynthSpec defaults (n_ff 256) to keep the tests fast
    "llama": SynthSpec(arch="llama", n_ff=256, n_vocab=512),
    "qwen2": SynthSpec(arch="qwen2", n_ff=256, n_vocab=512),
    "qwen3": SynthSpec(arch="qwen3", n_ff=256, n_vocab=512),
    "gemma3": SynthSpec(arch="gemma3", n_ff=256, n_vocab=512),  # 6 layers: 0-4 sliding, 5 global
    # rows of 320 (token_embd, output, q/k/v, gate/up) and 384 (ffn_down): K types fall back
    "llama_odd": SynthSpec(arch="llama", n_embd=320, n_ff=384, n_head=4, n_head_kv=1, n_vocab=512, seed=1),
    # ffn_down rows of 336 (not a multiple of 32): every quantized type falls back to F16 there
    "qwen3_f16fb": SynthSpec(arch="qwen3", n_ff=336, n_vocab=512, seed=2),
    # 12 layers: attn_v / ffn_down counters over blocks 0..11 (llama.cpp orders blk.2 before blk.10)
    "llama_deep": SynthSpec(arch="llama", n_layer=12, n_ff=256, n_head=2, n_head_kv=1,
                            head_dim=128, n_vocab=512, seed=3),
}


def _scalar_metadata(reader: GGUFReader) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or not field.types or field.types[0] == GGUFValueType.ARRAY:
            continue
        v = field.contents()
        out[name] = float(np.float32(v)) if field.types[0] == GGUFValueType.FLOAT32 else v
    return out


def read_result(path: Path) -> dict[str, object]:
    """{tensors: {name: [type, sha256]}, metadata: {scalar key: value}} of a GGUF file."""
    r = GGUFReader(path)
    tensors = {t.name: [t.tensor_type.name, hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()]
               for t in r.tensors}
    return {"tensors": tensors, "metadata": _scalar_metadata(r)}


def quantize(llama_cpp, src: Path, dst: Path, llama_ftype: int, pure: bool) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype
    params.pure = pure
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def record_case(llama_cpp, name: str, spec: SynthSpec, tmp: Path) -> dict:
    src = write_gguf(spec, tmp / f"{name}-source.gguf", "F32")
    doc: dict = {"case": name, "spec": spec.to_dict(), "llama_cpp_python": llama_cpp.__version__,
                 "files": {}, "mixes": {}}
    for section, table in (("files", FTYPES), ("mixes", LLAMA_MIXES)):
        for ft, info in table.items():
            dst = tmp / f"{name}-{ft}.gguf"
            try:
                quantize(llama_cpp, src, dst, info.llama_ftype, info.pure)
            except RuntimeError as e:
                doc[section][ft] = {"llama_ftype": info.llama_ftype, "pure": info.pure, "error": str(e)}
                continue
            res = read_result(dst)
            doc[section][ft] = {"llama_ftype": info.llama_ftype, "pure": info.pure, **res}
            dst.unlink()
    doc["tokenization"] = tokenize(llama_cpp, src, SENTENCES)
    return doc


SENTENCES = [
    "The cat sat on the mat.",
    "What time is it now? I think it was about four.",
    "They said the water in the sea was very cold at night.",
    "Hello, world! 3 + 4 = 7; caf\u00e9 na\u00efve \u2014 done.",
]


def tokenize(llama_cpp, model: Path, sentences: list[str]) -> dict[str, list[int]]:
    """llama.cpp's token ids (with BOS, special tokens not parsed) for each sentence."""
    llm = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        return {s: llm.tokenize(s.encode(), add_bos=True, special=False) for s in sentences}
    finally:
        llm.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/golden/synth")
    ap.add_argument("cases", nargs="*", default=list(CASES))
    args = ap.parse_args(argv)
    import llama_cpp  # recording only

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        with tempfile.TemporaryDirectory() as d:
            doc = record_case(llama_cpp, name, CASES[name], Path(d))
        (args.out / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        n_err = sum("error" in v for v in {**doc["files"], **doc["mixes"]}.values())
        print(f"{name}: {len(doc['files'])} ftypes + {len(doc['mixes'])} mixes, {n_err} refused", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
