"""Record the llama.cpp fidelity goldens: tests/golden/fidelity/<arch>-<ftype>.npz.

For each arch, qdbg.synth writes the F32 synthetic model of the default SynthSpec into a temp dir,
llama.cpp's own llama_model_quantize turns it into each ftype (default quantize params, as the
llama-quantize tool without flags), and tools/llama_oracle.py records a fixed 7-token prompt (BOS +
6 seeded NORMAL-token ids) and 3 greedy decode steps. The GGUF files are not kept: the manifest
stores the SynthSpec and the sha256 of every tensor (raw bytes) of both the F32 source and the
quantized file, so a test can prove qdbg.synth regenerates exactly what llama.cpp ran.

Size reduction: a node whose bytes equal those of its first source node (RESHAPE/VIEW such as
`Qcur-0` k=1, and the last layer's identity GET_ROWS(out_ids)) is stored as `alias_of` that node;
f16 nodes (KV-cache views) are stored as float16 (lossless).

Usage: /work/venv/bin/python tools/record_golden.py [--arch llama ...] [--ftype Q4_K_M ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_oracle as oracle  # noqa: E402

from qdbg.synth import ARCHS, SynthSpec, write_gguf  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "golden" / "fidelity"
FTYPES = ("F16", "Q8_0", "Q4_K_M", "Q5_K_M")
N_PROMPT = 7
N_DECODE = 3
PROMPT_SEED = 1234
N_CTX = 64
N_THREADS = 1
FORMAT_VERSION = 1
# gemma3: a 4-token window so the 10 recorded positions exercise the sliding-window mask
SPEC_OVERRIDES = {"gemma3": {"sliding_window": 4}}
# extra cases beyond one per arch: (arch, spec overrides). llama_odd has rows of 320 and 640, so
# Q4_K_M falls back to Q5_0/Q5_1/Q8_0 per tensor, as it does in real files such as SmolLM2 (576)
CASES = {"llama_odd": ("llama", {"n_embd": 320, "n_head": 5, "n_head_kv": 1, "n_ff": 640})}


def gguf_digest(path: Path) -> dict[str, Any]:
    """sha256 of the whole file and of each tensor's raw bytes, with ggml type and ne."""
    r = GGUFReader(path)
    tensors = {t.name: {"type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
                        "sha256": hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()}
               for t in r.tensors}
    return {"file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "tensors": tensors}


def make_prompt(path: Path, n: int = N_PROMPT, seed: int = PROMPT_SEED) -> list[int]:
    """BOS followed by n-1 distinct ids drawn (fixed seed) from the NORMAL tokens of the vocab."""
    r = GGUFReader(path)
    bos = int(r.fields["tokenizer.ggml.bos_token_id"].contents())
    types = np.asarray(r.fields["tokenizer.ggml.token_type"].contents())
    normal = np.flatnonzero(types == 1)
    rng = np.random.default_rng(seed)
    return [bos] + [int(x) for x in rng.choice(normal, size=n - 1, replace=False)]


def _pack_step(i: int, step: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict, int]:
    """Manifest entry of one step; fills `arrays`; returns (entry, number of aliased nodes)."""
    nodes, aliased = [], 0
    for n in step["nodes"]:
        arr = step["tensors"][n["key"]]
        n = dict(n)
        root = n["src_roots"][0] if n["src_roots"] else None
        src = step["tensors"].get(root) if root is not None else None
        if src is not None and src.dtype == arr.dtype and src.tobytes() == arr.tobytes():
            # same bytes as its first source (reshape/view, identity GET_ROWS of out_ids)
            n["alias_of"] = _by_key(nodes, root).get("alias_of") or root
            aliased += 1
        else:
            n["store"] = f"s{i}/{n['key']}"
            arrays[n["store"]] = arr.astype(np.float16) if n["type"] == "f16" else arr
        nodes.append(n)
    entry = {"kind": step["kind"], "positions": step["positions"], "n_kv": step["n_kv"],
             "nodes": nodes}
    return entry, aliased


def _by_key(nodes: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return next((n for n in nodes if n["key"] == key), {})


def record_one(spec: SynthSpec, ftype: str, f32_path: Path, work: Path, case: str | None = None) -> dict[str, Any]:
    """Quantize with llama.cpp, record, and write OUT_DIR/<case>-<ftype>.npz (case defaults to the
    arch); returns a summary."""
    case = case or spec.arch
    qpath = work / f"{spec.arch}-{ftype}.gguf"
    # llama.cpp's legacy ftypes are mixes (output.weight gets Q6_K); qdbg.synth calls them MOSTLY_*
    oracle.quantize(str(f32_path), str(qpath), ftype.removeprefix("MOSTLY_"))
    prompt = make_prompt(qpath)
    rec = oracle.record(str(qpath), prompt, n_decode=N_DECODE, n_ctx=N_CTX, n_threads=N_THREADS)
    arrays: dict[str, np.ndarray] = {"logits": rec["logits"].astype(np.float32)}
    steps, n_alias = [], 0
    for i, step in enumerate(rec["steps"]):
        entry, a = _pack_step(i, step, arrays)
        steps.append(entry)
        n_alias += a
    manifest = {
        "format": FORMAT_VERSION, "arch": spec.arch, "case": case, "ftype": ftype, "spec": spec.to_dict(),
        "llama_cpp_version": rec["llama_cpp_version"],
        "settings": {"n_ctx": N_CTX, "n_threads": N_THREADS, "flash_attn": "disabled",
                     "kv_type": "f16", "n_gpu_layers": 0, "extra_bufts": True,
                     "quantize": "llama_model_quantize default params (not pure, no imatrix)"},
        "tokens": rec["tokens"], "n_prompt": rec["n_prompt"], "n_decode": N_DECODE,
        "prompt_seed": PROMPT_SEED, "n_vocab": int(rec["logits"].shape[1]),
        "n_kv": rec["n_kv"], "weights": rec["weights"],
        "gguf": gguf_digest(qpath), "source_f32": gguf_digest(f32_path),
        "aliased_nodes": n_alias,
        "notes": "RESHAPE/VIEW nodes identical to their source are stored as alias_of; f16 nodes as "
                 "float16. Unnamed views/permutes/SET_ROWS are not recorded.",
        "steps": steps,
    }
    arrays["manifest"] = np.array(json.dumps(manifest, separators=(",", ":")))
    out = OUT_DIR / f"{case}-{ftype}.npz"
    np.savez_compressed(out, **arrays)
    repack = sorted({w["buffer"] for w in rec["weights"].values()})
    return {"file": out.name, "bytes": out.stat().st_size, "tokens": rec["tokens"],
            "n_kv": rec["n_kv"], "nodes": len(steps[0]["nodes"]), "aliased": n_alias,
            "buffers": repack}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="*", default=list(ARCHS))
    ap.add_argument("--ftype", nargs="*", default=list(FTYPES))
    ap.add_argument("--case", nargs="*", default=[], choices=sorted(CASES),
                    help="record these extra cases (instead of --arch)")
    args = ap.parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    jobs = [(c, CASES[c][0], CASES[c][1]) for c in args.case] or [
        (arch, arch, SPEC_OVERRIDES.get(arch, {})) for arch in args.arch]
    for case, arch, overrides in jobs:
        spec = SynthSpec(arch=arch, **overrides)
        with tempfile.TemporaryDirectory(prefix="qdbg-golden-") as tmp:
            f32 = write_gguf(spec, Path(tmp) / f"{arch}-F32.gguf", "F32")
            for ftype in args.ftype:
                s = record_one(spec, ftype, f32, Path(tmp), case)
                total += s["bytes"]
                print(json.dumps(s), flush=True)
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
