"""Record tests/golden/kernels/flash_attn.json + flash_attn_rows.npz from the installed llama.cpp.

For every case of tests/test_kernels_flash_attn.py (same input builder), run ggml_flash_attn_ext
through tools/ggml_oracle.py (the wheel's CPU backend, the case's thread count) and store the
sha256 of the whole float32 output [n_tok, n_head * d] and the first values of its last row.
Usage: python tools/record_kernels_flash_attn.py [--check]   (--check: compare qdbg, write nothing)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests"), str(ROOT)]

import ggml_oracle  # noqa: E402
from test_kernels_flash_attn import CASES, GOLDEN, Case, digest, make_inputs, sample  # noqa: E402

from qdbg.numerics.kernels.flash_attn import flash_attn_ext, kernel_for  # noqa: E402


def oracle(c: Case) -> np.ndarray:
    q, k, v, mask, scale = make_inputs(c)
    out = ggml_oracle.flash_attn_ext(q, k.view(np.float16).reshape(c.n_kv, -1), v.view(np.float16).reshape(c.n_kv, -1),
                                     mask, scale, c.n_kv, c.n_head_kv, softcap=c.softcap,
                                     n_threads=c.n_threads)
    return np.ascontiguousarray(out, np.float32).reshape(c.n_tok, c.n_head * c.d)


def main() -> None:
    check = "--check" in sys.argv
    cases, rows, n_bad = {}, {}, 0
    for c in CASES:
        ref = oracle(c)
        kind = kernel_for(c.n_tok, c.n_kv, c.n_threads)
        cases[c.name] = {"kernel": kind, "sha256": digest(ref)}
        rows[c.name] = sample(ref)
        if check:
            q, k, v, mask, scale = make_inputs(c)
            got = flash_attn_ext(q, k, v, mask, scale, n_threads=c.n_threads, softcap=c.softcap)
            nd = int(np.sum(got.view(np.uint32) != ref.view(np.uint32)))
            n_bad += nd != 0
            print(f"{kind:9s} {c.name}: {'EQ' if nd == 0 else f'DIFF {nd}/{ref.size}'}")
    if check:
        print(f"{len(CASES) - n_bad}/{len(CASES)} bit-equal")
        return
    GOLDEN.mkdir(parents=True, exist_ok=True)
    (GOLDEN / "flash_attn.json").write_text(json.dumps({"cases": cases}, indent=1) + "\n")
    np.savez_compressed(GOLDEN / "flash_attn_rows.npz", **rows)
    print(f"wrote {len(cases)} cases")


if __name__ == "__main__":
    main()
