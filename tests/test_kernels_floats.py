"""Float MUL_MAT kernels bit-equal to llama.cpp: F32/F16/BF16 weights and the attention products.

Goldens: tests/golden/kernels/floats.json (tools/record_kernels_floats.py), the sha256 of
llama.cpp's output bytes per case of tests/kernels_floats_cases.py; and the kq/kqv and F16-weight
MUL_MAT nodes of the whole-model recordings in tests/golden/fidelity. Hermetic (numpy + qdbg).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader

from qdbg.numerics.kernels.floats import mul_mat_f16_heads, mul_mat_float, vec_dot_f16
from qdbg.synth import SynthCache, SynthSpec, write_gguf
from tests import kernels_floats_cases as C
from tests.goldens import Golden, Node, golden_files, load_golden

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


def test_vec_dot_f16_tails() -> None:
    """The scalar tail (n % 32) in double, against the n_tok = 1 F16 product (which is vec_dot)."""
    for c in C.mm_cases():
        if c["qtype"] == "F16" and c["n_tok"] == 1 and c["n_out"] == 64:
            w, x = C.mm_inputs(c)
            y = mul_mat_float(w, QT.F16, x)
            xh = x.astype(np.float16).view(np.uint16).reshape(-1)
            got = np.array([vec_dot_f16(c["n_in"], w.reshape(-1), i * c["n_in"], xh, 0)
                            for i in range(c["n_out"])], np.float32)
            assert np.array_equal(got.view(np.uint32), y[0].view(np.uint32)), c["id"]


def _mul_mats(g: Golden, keep: Callable[[Node], bool]) -> Iterator[tuple[int, Node, list[Node]]]:
    """(step, node, the step's nodes) for each recorded MUL_MAT node that `keep` accepts."""
    for st in range(len(g.steps)):
        nodes = g.nodes(st)
        for nd in nodes:
            if nd.op == "MUL_MAT" and keep(nd):
                yield st, nd, nodes


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.stem)
def test_fidelity_attention_nodes(path: Path) -> None:
    """Every kq-il / kqv-il of the recorded models: inputs are the recorded f16 cache views and the
    ROPE'd Q (kq) or kq_soft_max (kqv)."""
    g = load_golden(path)
    n = 0
    for st, nd, nodes in _mul_mats(g, lambda nd: nd.name.startswith(("kq-", "kqv-"))):
        a = g.tensor_by_key(st, nd.src_keys[0])[0].astype(np.float16).view(np.uint16)
        if nd.name.startswith("kq-"):
            qname = nd.srcs[1].replace(" (view) (permuted)", "")
            q = g.tensor_by_key(st, [m for m in nodes if m.name == qname][-1].key)[0]
            y = mul_mat_f16_heads(a, np.ascontiguousarray(q.transpose(1, 0, 2)), False)
        else:
            y = mul_mat_f16_heads(a, g.tensor_by_key(st, nd.src_keys[1])[0], True)
        ref = g.tensor_by_key(st, nd.key)[0]
        assert np.array_equal(y.view(np.uint32), ref.view(np.uint32)), f"step {st} {nd.name}"
        n += 1
    assert n > 0


@pytest.mark.parametrize("path", [p for p in golden_files() if p.stem.endswith("-F16")],
                         ids=lambda p: p.stem)
def test_fidelity_f16_weight_nodes(path: Path, tmp_path: Path) -> None:
    """Every MUL_MAT of an F16 model's F16 weights (rebuilt by qdbg.synth), against llama.cpp."""
    g = load_golden(path)
    spec = SynthSpec.from_dict(g.spec)
    reader = GGUFReader(write_gguf(spec, tmp_path / "m.gguf", g.ftype, cache=SynthCache(spec)))
    weights = {t.name: t for t in reader.tensors if t.tensor_type in (QT.F32, QT.F16, QT.BF16)
               and len(t.shape) == 2}
    n = 0
    for st, nd, _ in _mul_mats(g, lambda nd: nd.srcs[0] in weights):
        t = weights[nd.srcs[0]]
        w = np.asarray(t.data).reshape(int(t.shape[1]), int(t.shape[0]))
        x = g.tensor_by_key(st, nd.src_keys[1])
        y = mul_mat_float(w, QT(t.tensor_type), x.reshape(-1, x.shape[-1]))
        ref = g.tensor_by_key(st, nd.key).reshape(y.shape)
        assert np.array_equal(y.view(np.uint32), ref.view(np.uint32)), f"step {st} {nd.name}"
        n += 1
    assert n > 0
