"""Record llama.cpp's float MUL_MAT outputs for tests/test_kernels_floats.py.

Runs every case of tests/kernels_floats_cases.py through the installed wheel's ggml
(tools/ggml_oracle.py: F32/F16/BF16 weights x F32 activations; kq and kqv over llama.cpp's exact
KV-cache views) with 1 thread, checks that 3 threads give the same bits, and writes
tests/golden/kernels/floats.json: {case id: {"sha": digest, "head": first 2 values}}.

    python tools/record_kernels_floats.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ggml_oracle as O  # noqa: E402
from tests import kernels_floats_cases as C  # noqa: E402


def record_mm(c: dict, n_threads: int) -> np.ndarray:
    w, x = C.mm_inputs(c)
    return O.mul_mat(w, c["qtype"], c["n_in"], x, n_threads=n_threads).reshape(c["n_tok"], c["n_out"])


def record_att(c: dict, n_threads: int) -> np.ndarray:
    d = C.att_inputs(c)
    if c["op"] == "kq":
        y = O.attn_kq(d["cache"], d["src1"], c["n_kv"], C.ATT_N_HEAD_KV, n_threads=n_threads)
    else:
        y = O.attn_kqv(d["cache"], d["src1"], c["n_kv"], C.ATT_N_HEAD_KV, n_threads=n_threads)
    return y.reshape(d["b"].shape[0], c["n_tok"], -1)


def main() -> None:
    out: dict[str, dict] = {}
    thread_diffs = []
    for cases, fn in ((C.mm_cases(), record_mm), (C.att_cases(), record_att)):
        for c in cases:
            y = fn(c, 1)
            if not np.array_equal(y.view(np.uint32), fn(c, 3).view(np.uint32)):
                thread_diffs.append(c["id"])
            out[c["id"]] = {"sha": C.digest(y), "head": [float(v) for v in y.reshape(-1)[:2]]}
    C.GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    rows = ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in out.items())
    C.GOLDEN.write_text(f'{{"threads_differ": {json.dumps(thread_diffs)}, "cases": {{\n{rows}}}}}\n')
    print(f"{len(out)} cases -> {C.GOLDEN}; 1 vs 3 threads differ in {len(thread_diffs)}: "
          f"{thread_diffs[:5]}")


if __name__ == "__main__":
    main()
