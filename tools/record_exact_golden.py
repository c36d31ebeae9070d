"""Record the exact-mode goldens: tests/golden/exact/<arch>-<wtype>.npz (loader tests/exact_goldens.py).

For each arch (llama, qwen2, qwen3, gemma3) qdbg.synth writes the F32 synthetic model of the default
SynthSpec (every matmul row a multiple of 256), llama.cpp's own llama_model_quantize turns it into one
weight type with params.pure = True, and tools/llama_hash_oracle.py runs each scenario in a fresh
context, keeping for every graph node of every micro-batch its sha256 (and a small fingerprint), and
per step the logits' sha256 and last row. Each scenario is run a second time without the eval
callback: `logits_same_without_cb` says whether observing the graph changed any logit bit.

The GGUF files are not kept: the manifest stores the SynthSpec and the type and sha256 of every tensor
of the quantized file, and the recorder checks that qdbg.synth.write_gguf(spec, path, wtype) writes
exactly those tensors (`qdbg_regenerates`).

npz layout: `manifest` (JSON), and per scenario s and step i: `s/<scenario>/<i>/sha256` uint8
[n_nodes, 32] (zeros for view nodes), `.../head` float32 [n_nodes, 4] (first values; NaN padded),
`.../sum` float64 [n_nodes] (sum of all values, float64), `.../top_ids` int32 [32] and
`.../top_logits` float32 [32]: the last position's 32 largest logits (the step's full logits are
covered by `logits_sha256`).

Usage: python tools/record_exact_golden.py [--arch A ...] [--wtype T ...] [--scenario S ...]
                                           [--full DIR] [--out DIR]
--full DIR also writes every node's full array (one .npz per step, not committed); --out DIR puts the
golden files elsewhere (default tests/golden/exact).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ggml_oracle  # noqa: E402
import llama_hash_oracle as hashrec  # noqa: E402
import llama_oracle as oracle  # noqa: E402

from qdbg.synth import ARCHS, SynthSpec, write_gguf  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "golden" / "exact"
FORMAT_VERSION = 1
PROMPT_SEED = 4321
N_TOP = 32  # logits kept per step: the last position's N_TOP largest (ids and values)
# our weight-type name -> the llama_ftype given to llama_model_quantize (with pure = True)
WTYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1",
          "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0", "Q2_K": "Q2_K", "Q3_K": "Q3_K_S",
          "Q4_K": "Q4_K_S", "Q5_K": "Q5_K_S", "Q6_K": "Q6_K"}
S = hashrec.Settings
# name -> (prompt tokens, one-token decodes, settings, what it exercises)
SCENARIOS: dict[str, tuple[int, int, hashrec.Settings, str]] = {
    "prompt12": (12, 2, S(), "prompt >= 8 tokens, then 2 one-token decodes"),
    "prompt5": (5, 1, S(), "prompt of 2-7 tokens, then 1 decode"),
    "ubatch5": (12, 0, S(n_batch=5, n_ubatch=5), "12-token prompt split 5+5+2 (each its own graph)"),
    "fa_prompt12": (12, 1, S(flash_attn=True), "flash attention, prompt < 64 (one_chunk kernel) + decode"),
    "fa_prompt80": (80, 0, S(flash_attn=True), "flash attention, prompt >= 64 (tiled kernel)"),
    "fa_long_t1": (300, 1, S(n_ctx=1024, flash_attn=True),
                   "flash attention, 300-token prompt then a decode over 512 KV cells (split-KV path), 1 thread"),
    "fa_long_t2": (300, 1, S(n_ctx=1024, n_threads=2, flash_attn=True),
                   "as fa_long_t1 with 2 threads (2 KV chunks)"),
}


def gguf_tensors(path: Path) -> dict[str, dict[str, Any]]:
    """name -> {type, shape (numpy), sha256 of the raw bytes} of every tensor of a GGUF file."""
    r = GGUFReader(path)
    return {t.name: {"type": t.tensor_type.name, "shape": [int(x) for x in t.data.shape],
                     "sha256": hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()}
            for t in r.tensors}


def make_prompt(path: Path, n: int, seed: int = PROMPT_SEED) -> list[int]:
    """BOS then n-1 seeded NORMAL-token ids (distinct while the vocab allows)."""
    r = GGUFReader(path)
    bos = int(r.fields["tokenizer.ggml.bos_token_id"].contents())
    normal = np.flatnonzero(np.asarray(r.fields["tokenizer.ggml.token_type"].contents()) == 1)
    rng = np.random.default_rng(seed)
    return [bos] + [int(x) for x in rng.choice(normal, size=n - 1, replace=n - 1 > len(normal))]


def _step_entry(sc: str, i: int, st: hashrec.Step, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(st.nodes)
    sha = np.zeros((n, 32), np.uint8)
    head = np.full((n, 4), np.nan, np.float32)
    tot = np.full(n, np.nan, np.float64)
    nodes = []
    for j, m in enumerate(st.nodes):
        if "sha256" in m:
            sha[j] = np.frombuffer(bytes.fromhex(m["sha256"]), np.uint8)
            head[j, :len(m["head"])] = m["head"]
            tot[j] = m["sum"]
        nodes.append([m["name"], m["k"], m["op"], m["type"], m["ne"], m.get("srcs", []), m["op_params"]])
    pre = f"s/{sc}/{i}"
    arrays[f"{pre}/sha256"], arrays[f"{pre}/head"], arrays[f"{pre}/sum"] = sha, head, tot
    assert st.logits is not None
    last = st.logits[-1].astype(np.float32)
    top = np.argsort(-last, kind="stable")[:N_TOP]
    arrays[f"{pre}/top_ids"], arrays[f"{pre}/top_logits"] = top.astype(np.int32), last[top]
    masks = [m["ne"][0] for m in st.nodes if m["name"] == "attn_inp_kq_mask"]
    return {"positions": st.positions, "n_kv": masks,
            "logits_sha256": hashlib.sha256(np.ascontiguousarray(st.logits, np.float32).tobytes()).hexdigest(),
            "nodes": nodes}


def record_one(spec: SynthSpec, wtype: str, f32_path: Path, work: Path, scenarios: list[str],
               full: Path | None, out_dir: Path = OUT_DIR) -> dict[str, Any]:
    """Quantize (pure), run every scenario, write OUT_DIR/<arch>-<wtype>.npz; returns a summary."""
    t0 = time.time()
    qpath = work / f"{spec.arch}-{wtype}.gguf"
    oracle.quantize(str(f32_path), str(qpath), WTYPES[wtype], pure=True)
    tensors = gguf_tensors(qpath)
    ours = gguf_tensors(write_gguf(spec, work / f"qdbg-{spec.arch}-{wtype}.gguf", wtype))
    regen = ours == tensors
    arrays: dict[str, np.ndarray] = {}
    entries, weights = [], {}
    for sc in scenarios:
        n_prompt, n_decode, settings, what = SCENARIOS[sc]
        prompt = make_prompt(qpath, n_prompt)
        res = hashrec.run(str(qpath), prompt, n_decode, settings, full=full is not None)
        plain = hashrec.run(str(qpath), prompt, n_decode, settings, cb=False)
        weights = res["weights"]
        same = bool(np.array_equal(res["logits"].view(np.uint32), plain["logits"].view(np.uint32)))
        steps = [_step_entry(sc, i, st, arrays) for i, st in enumerate(res["steps"])]
        entries.append({"name": sc, "what": what, "settings": settings.to_dict(),
                        "n_ctx_actual": res["n_ctx"], "kv_type": "f16", "tokens": res["tokens"],
                        "n_prompt": n_prompt, "n_decode": n_decode, "logits_same_without_cb": same,
                        "steps": steps})
        if full is not None:
            for i, st in enumerate(res["steps"]):
                np.savez(full / f"{spec.arch}-{wtype}-{sc}-{i}.npz", logits=st.logits, **st.arrays)
    manifest = {
        "format": FORMAT_VERSION, "arch": spec.arch, "wtype": wtype, "spec": spec.to_dict(),
        "quantize": {"llama_ftype": WTYPES[wtype], "pure": True, "imatrix": None,
                     "source": "F32 file written by qdbg.synth.write_gguf(spec, path, 'F32')"},
        "build": ggml_oracle.system_info(), "prompt_seed": PROMPT_SEED,
        "gguf_tensors": tensors, "weights": weights, "qdbg_regenerates": regen,
        "scenarios": entries,
    }
    arrays["manifest"] = np.array(json.dumps(manifest, separators=(",", ":")))
    out = out_dir / f"{spec.arch}-{wtype}.npz"
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    types = sorted({w["type"] + "/" + w["buffer"] for w in weights.values()})
    return {"file": out.name, "bytes": out.stat().st_size, "seconds": round(time.time() - t0, 1),
            "qdbg_regenerates": regen, "weight_types": types,
            "logits_same_without_cb": all(e["logits_same_without_cb"] for e in entries),
            "steps": {e["name"]: len(e["steps"]) for e in entries}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", nargs="*", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--wtype", nargs="*", default=list(WTYPES), choices=list(WTYPES))
    ap.add_argument("--scenario", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--full", type=Path, default=None, help="also write every node's array here")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="where the .npz files go")
    args = ap.parse_args()
    if args.full is not None:
        args.full.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for arch in args.arch:
            spec = SynthSpec(arch=arch)
            f32 = write_gguf(spec, work / f"{arch}-src-F32.gguf", "F32")
            for wtype in args.wtype:
                print(json.dumps(record_one(spec, wtype, f32, work, args.scenario, args.full, args.out)), flush=True)


if __name__ == "__main__":
    main()
