"""Float MUL_MAT kernels bit-equal to llama.cpp: F32/F16/BF16 weights and the attention products.

Goldens: tests/golden/kernels/floats.json (tools/record_kernels_floats.py), the sha256 of
llama.cpp's output bytes per case of tests/kernels_floats_cases.py. Hermetic (numpy + qdbg).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from qdbg.numerics.kernels.floats import mul_mat_f16_heads, mul_mat_float, vec_dot_f16
from tests import kernels_floats_cases as C

GOLD = json.loads(C.GOLDEN.read_text())


def _check(case_id: str, y: np.ndarray) -> None:
    want = GOLD["cases"][case_id]
    assert C.digest(y) == want["sha"], (
        f"{case_id}: first values {y.reshape(-1)[:2].tolist()} vs llama.cpp {want['head']}")


def test_recorded_thread_counts_agree() -> None:
    assert GOLD["threads_differ"] == []


@pytest.mark.parametrize("qtype", C.MM_TYPES)
def test_mul_mat_float(qtype: str) -> None:
    for c in C.mm_cases():
        if c["qtype"] == qtype:
            w, x = C.mm_inputs(c)
            _check(c["id"], mul_mat_float(w, QT[qtype], x))


@pytest.mark.parametrize("op", ("kq", "kqv"))
def test_attention_products(op: str) -> None:
    for c in C.att_cases():
        if c["op"] == op:
            d = C.att_inputs(c)
            _check(c["id"], mul_mat_f16_heads(d["a"], d["b"], d["contiguous"]))


def test_vec_dot_f16_matches_single_token_kq() -> None:
    c = next(c for c in C.att_cases() if c["op"] == "kq" and c["n_tok"] == 1 and c["hd"] == 64)
    d = C.att_inputs(c)
    y = mul_mat_f16_heads(d["a"], d["b"], False)
    qh = d["b"].astype(np.float16).view(np.uint16)
    for h in (0, d["b"].shape[0] - 1):
        a = d["a"][h // c["gqa"]]
        got = [vec_dot_f16(a.shape[1], a.reshape(-1), i * a.shape[1], qh[h].reshape(-1), 0)
               for i in range(a.shape[0])]
        assert np.array_equal(np.array(got, np.float32).view(np.uint32), y[h, 0].view(np.uint32))
