"""K-quant MUL_MAT (Q2_K..Q6_K, Q4_K repacked) bit-equal with llama.cpp's recorded outputs.

Golden data: tests/golden/kernels/kquants.npz from tools/record_kernels_kquants.py (seeds,
input hashes, llama.cpp outputs; see that tool for how a few arrays cover every n_tok).
Every n_tok of the list runs the kernel that llama.cpp runs for it: vec_dot (< 8 rows),
tiled (>= 8 rows), repack gemm (groups of 4) + gemv (the rest).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from qdbg.errors import QdbgError
from qdbg.numerics.kernels.kquants import kquant_path, mul_mat_kquant
from qdbg.quant import quantize

GOLDEN = Path(__file__).parent / "golden" / "kernels" / "kquants.npz"


_data = np.load(GOLDEN)
MANIFEST = json.loads(str(_data["manifest"]))
SMALL = [c for c in MANIFEST["cases"] if "y_sha256" not in c]
BIG = [c for c in MANIFEST["cases"] if "y_sha256" in c]


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _weight(qtype: str, n_in: int, n_out: int, seed: int) -> np.ndarray:
    """Same as the recorder's weight() (the manifest's sha256 checks it)."""
    rng = np.random.default_rng(seed)
    mag = rng.choice(np.array([1e-3, 1.0, 50.0]), size=(n_out, 1))
    return quantize((rng.standard_normal((n_out, n_in)) * mag).astype(np.float32), QT[qtype])


def _activation(n_tok: int, n_in: int, seed: int) -> np.ndarray:
    """Same as the recorder's activation() (the manifest's sha256 checks it)."""
    rng = np.random.default_rng(seed + 1000)
    mag = rng.choice(np.array([0.01, 1.0, 300.0]), size=(n_tok, 1))
    x = (rng.standard_normal((n_tok, n_in)) * mag).astype(np.float32)
    x[1, :256] = 0.0
    x[0, 3], x[0, 7] = 5e3, -5e3
    return x


def _inputs(case: dict, n_tok: int) -> tuple[np.ndarray, np.ndarray]:
    raw = _weight(case["type"], case["n_in"], case["n_out"], case["seed"])
    x = _activation(n_tok, case["n_in"], case["seed"])
    assert _sha(raw) == case["w_sha256"], "weight rebuild drifted from the recording"
    assert _sha(x) == case["x_sha256"], "activation rebuild drifted from the recording"
    return raw, x


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("case", SMALL, ids=[c["key"] for c in SMALL])
def test_every_batch_size_bit_equal(case: dict) -> None:
    raw, x = _inputs(case, 33)
    key = case["key"]
    for n_tok in MANIFEST["n_toks"]:
        if case["repacked"]:
            n_gemm = n_tok - n_tok % 4
            want = np.concatenate([_data[f"{key}/gemm"][:n_gemm], _data[f"{key}/gemv"][n_gemm:n_tok]])
        else:
            want = _data[f"{key}/vec" if n_tok < 8 else f"{key}/tiled"][:n_tok]
        got = mul_mat_kquant(raw, QT[case["type"]], case["n_in"], x[:n_tok], case["repacked"])
        assert _bits_equal(got, want), (key, n_tok, kquant_path(QT[case["type"]], n_tok, case["repacked"]),
                                        int((got != want).sum()))


@pytest.mark.parametrize("case", BIG, ids=[c["key"] for c in BIG])
def test_big_tiles_bit_equal(case: dict) -> None:
    raw, x = _inputs(case, case["n_tok"])
    got = mul_mat_kquant(raw, QT[case["type"]], case["n_in"], x, case["repacked"])
    assert _sha(got) == case["y_sha256"]


def test_paths() -> None:
    assert kquant_path(QT.Q6_K, 7, False) == "vec_dot"
    assert kquant_path(QT.Q6_K, 8, False) == "tiled"
    assert kquant_path(QT.Q4_K, 1, True) == "repack"


@pytest.mark.parametrize("qtype, n_out", [(QT.Q5_K, 16), (QT.Q4_K, 12), (QT.Q2_K, 8)])
def test_rejects_repack_this_build_never_runs(qtype: QT, n_out: int) -> None:
    raw = quantize(np.ones((n_out, 256), np.float32), qtype)
    with pytest.raises(QdbgError, match="never repacks"):
        mul_mat_kquant(raw, qtype, 256, np.ones((1, 256), np.float32), True)


def test_rejects_bad_shapes() -> None:
    raw = quantize(np.ones((8, 256), np.float32), QT.Q4_K)
    with pytest.raises(QdbgError, match="not a K-quant"):
        mul_mat_kquant(raw, QT.Q8_0, 256, np.ones((1, 256), np.float32), False)
    with pytest.raises(QdbgError, match="weight of shape"):
        mul_mat_kquant(raw, QT.Q4_K, 512, np.ones((1, 512), np.float32), False)
    with pytest.raises(QdbgError, match="activation of shape"):
        mul_mat_kquant(raw, QT.Q4_K, 256, np.ones((1, 512), np.float32), False)


@pytest.mark.parametrize("stem", ["llama-Q4_K_M", "llama-Q5_K_M"])
def test_fidelity_golden_matmuls_bit_equal(stem: str, tmp_path: Path) -> None:
    """Every K-quant MUL_MAT node llama.cpp recorded for a synthetic model (7-token prompt and
    1-token decodes: Q4_K repacked gemm + gemv, Q5_K and Q6_K vec_dot), fed its recorded input."""
    from goldens import GOLDEN_DIR, load_golden
    from qdbg.model import Model
    from qdbg.synth import SynthCache, SynthSpec, write_gguf

    g = load_golden(GOLDEN_DIR / f"{stem}.npz")
    spec = SynthSpec.from_dict(g.spec)
    m = Model(write_gguf(spec, tmp_path / f"{stem}.gguf", g.ftype, cache=SynthCache(spec)))
    seen: set[tuple[str, int]] = set()
    for step in range(len(g.steps)):
        for node in g.nodes(step, op="MUL_MAT"):
            info = m.tensors.get(node.srcs[0])
            if info is None or info.qtype not in (QT.Q4_K, QT.Q5_K, QT.Q6_K) or node.src_keys[1] is None:
                continue
            x = g.tensor_by_key(step, node.src_keys[1])
            want = g.tensor_by_key(step, node.key)
            x = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
            want = want.reshape(x.shape[0], -1)
            n_out = want.shape[1]
            repacked = info.qtype == QT.Q4_K and n_out % 8 == 0
            got = mul_mat_kquant(m.gguf.raw(node.srcs[0]).reshape(n_out, -1), info.qtype, x.shape[1], x, repacked)
            assert _bits_equal(got, want), (stem, step, node.name)
            seen.add((info.qtype.name + ("/repack" if repacked else ""), x.shape[0]))
    assert {n for _, n in seen} == {1, 7} and len(seen) == 4, seen


def test_q8_0_and_q8_1_kernels_match_the_numpy_reference() -> None:
    """The legacy matmuls' numba quantize_row_q8_0/q8_1 give the reference's (cpu variant) bits."""
    from qdbg.numerics.kernels.q8k import quantize_q8_32_fast
    from qdbg.quant.activations import quantize_q8_0, quantize_q8_1

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((14, 576)) * 3).astype(np.float32)
    x[0, :32] = 0.0
    x[1, 32:64] = -0.0
    x[2, 5], x[3, 300], x[4, 100] = np.nan, np.inf, -np.inf
    x[5, :32] = 1e-40                                   # subnormal block
    x[6, 10], x[6, 11] = 1e38, -1e38
    x[7, 64:96] = 0.5
    x[8, :32] = rng.integers(-3, 4, 32)
    x[9, 96:128] = np.nan
    x[10, :32] = 1e-45
    x[11, :32] = 127.5 * np.arange(32) / 31                 # halves: rint rounds them to even
    x[12] = rng.standard_normal(576).astype(np.float32) * 1e5
    q0, d0 = quantize_q8_0(x)
    q, d, _ = quantize_q8_32_fast(x, with_sum=False)
    assert np.array_equal(q0.astype(np.int16), q) and d0.astype(np.float32).tobytes() == d.tobytes()
    q1, d1, s1 = quantize_q8_1(x)
    q, d, s = quantize_q8_32_fast(x, with_sum=True)
    assert np.array_equal(q1.astype(np.int16), q) and d1.astype(np.float32).tobytes() == d.tobytes()
    assert s1.astype(np.float32).tobytes() == s.tobytes()


def test_q8_K_kernel_matches_the_numpy_reference() -> None:
    """The matmuls' numba quantize_row_q8_K gives the reference's bits, special values included."""
    from qdbg.numerics.kernels.q8k import quantize_q8_K_fast
    from qdbg.quant.activations import quantize_q8_K

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((12, 1024)) * 3).astype(np.float32)
    x[0, :256] = 0.0
    x[1, 256:512] = -0.0
    x[2, 5], x[2, 700] = np.nan, 1e30
    x[3, 300], x[4, 600] = np.inf, -np.inf
    x[5, :256] = 1e-40                                  # subnormal: iscale overflows to inf
    x[6, 10], x[6, 11] = 1e38, -1e38
    x[7, 256:512] = 0.5
    x[7, 300] = -0.5                                    # a tie: the first largest |x| wins
    x[8, :256] = rng.integers(-3, 4, 256)
    x[9, 512:768] = np.nan
    for want, got in zip(quantize_q8_K(x), quantize_q8_K_fast(x)):
        assert want.dtype == got.dtype and want.shape == got.shape
        assert want.tobytes() == got.tobytes()


def test_portable_madd_gives_the_avx2_integers() -> None:
    """The byte-madd sums in portable IR (hosts without AVX2) equal the vpmaddubsw ones."""
    import numba

    from qdbg.numerics.kernels import kq_simd

    if not kq_simd.native_avx2():
        pytest.skip("no AVX2 here: only the portable IR runs")
    fns = {(g, nt, nat): kq_simd._make_madd(g, nt, native=nat)
           for g in (4, 64) for nt in (1, 4) for nat in (True, False)}

    def runner(fn, g, nt):
        @numba.njit(cache=False)
        def run(codes, sc, q, n, out):
            fn(codes, sc, q, 0, n, n, out, 0, out.shape[1], 8 if g == 4 else 1)
        return run

    rng = np.random.default_rng(3)
    n = 512
    codes = rng.integers(0, 64, n).astype(np.uint8)
    sc = rng.integers(-128, 128, n // 16).astype(np.int32)   # one scale per 16 elements
    q = rng.integers(-128, 128, 4 * n).astype(np.int8)
    q[:64] = -128                                       # the largest pair sums |63*-128*2|
    codes[:64] = 63
    for g in (4, 64):
        for nt in (1, 4):
            width = n // 4 if g == 4 else n // 64
            outs = []
            for nat in (True, False):
                out = np.zeros((nt, width), np.int32)
                runner(fns[(g, nt, nat)], g, nt)(codes, sc, q, n, out)
                outs.append(out)
            w16 = sc.repeat(16).astype(np.int64) * codes
            want = (w16 * q[:nt * n].reshape(nt, n)).reshape(nt, width, -1).sum(axis=-1)
            assert np.array_equal(outs[0], want) and np.array_equal(outs[1], want), (g, nt)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K"])
def test_rows_off_word_alignment_are_staged_and_give_the_same_bits(qtype: str) -> None:
    """Q4_K/Q5_K rows are read in place when they start on 8-byte boundaries (as in a GGUF); bytes
    that do not (a buffer at an odd address) go through the staging copy with the same result."""
    for case in [c for c in SMALL if c["type"] == qtype]:
        raw, x = _inputs(case, 33)
        buf = np.zeros(raw.size + 1, np.uint8)
        buf[1:] = raw.reshape(-1)
        odd = buf[1:].reshape(raw.shape)
        assert odd.ctypes.data % 8 and raw.ctypes.data % 8 == 0
        for n_tok in (3, 14):
            args = (QT[qtype], case["n_in"], x[:n_tok], case["repacked"])
            assert _bits_equal(mul_mat_kquant(odd, *args), mul_mat_kquant(raw, *args)), (case["key"], n_tok)


@pytest.mark.parametrize("qtype, repacked, maker", [("Q4_K", True, "_make_q4k_row"),
                                                  ("Q5_K", False, "_make_q5k_row"),
                                                  ("Q6_K", False, "_make_q6k_row")])
def test_fused_kernels_in_portable_ir_give_the_same_bits(qtype: str, repacked: bool, maker: str) -> None:
    """Decode steps (repacked Q4_K below 4 tokens, Q5_K and Q6_K below 8) run the fused kernels
    (kq_fused); their portable IR (hosts without AVX2) gives the bits of the AVX2 one, which the
    goldens above hold to llama.cpp's."""
    import numba

    from qdbg.numerics.kernels import kq_fused
    from qdbg.numerics.kernels.kq_simd import native_avx2
    from qdbg.numerics.kernels.q8k import quantize_q8_K_fast

    if not native_avx2():
        pytest.skip("no AVX2 here: only the portable IR runs")
    row = getattr(kq_fused, maker)(native=False)

    @numba.njit(cache=False)
    def portable(w_raw, q, yd, bs, out):
        nb = q.shape[1] // 256
        for r in range(w_raw.shape[0]):
            for t in range(q.shape[0]):
                out[t, r] = row(w_raw[r], q[t], yd[t], bs[t], nb)

    n_tok = 3 if repacked else 7
    cases = [c for c in SMALL if c["type"] == qtype and c["repacked"] == repacked]
    assert cases
    for case in cases:
        raw, x = _inputs(case, 33)
        x = x[:n_tok]
        q, d, bs = quantize_q8_K_fast(x)
        out = np.empty((n_tok, raw.shape[0]), np.float32)
        portable(raw, q, d, bs, out)
        want = mul_mat_kquant(raw, QT[qtype], case["n_in"], x, repacked)
        assert _bits_equal(out, want), case["key"]
