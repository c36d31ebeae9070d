"""qdbg.quant against golden bytes recorded from llama.cpp (tools/record_quant_golden.py).

Weight side: quantize() must be byte-identical with ggml_quantize_chunk(imatrix=NULL) and
dequantize() bit-identical with ggml's to_float. Activation side: the Q8_0/Q8_1/Q8_K/F16/BF16
conversions must reproduce the AVX2 CPU backend's from_float and repack quantizers exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qdbg.errors import QdbgError, UnsupportedError
from qdbg.quant import (QUANTIZE_TYPES, VEC_DOT_TYPE, dequantize, q8_1_sums, quantize, quantize_q8_0,
                        quantize_q8_1, quantize_q8_K, round_trip, row_bytes)
from qdbg.quant.kquants import nearest_int

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "quant")
QUANT_NAMES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
DEQUANT_NAMES = QUANT_NAMES + ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]


@pytest.fixture(scope="module")
def wg() -> dict[str, np.ndarray]:
    with np.load(os.path.join(GOLDEN, "weights.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ag() -> dict[str, np.ndarray]:
    with np.load(os.path.join(GOLDEN, "activations.npz")) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("name", QUANT_NAMES)
def test_quantize_byte_identical_with_llama_cpp(wg: dict, name: str) -> None:
    got = quantize(wg["x"], QT[name])
    want = wg[f"q_{name}"]
    assert got.dtype == np.uint8 and got.shape == want.shape
    bad = np.nonzero((got != want).any(axis=1))[0]
    assert bad.size == 0, f"{name}: rows {bad.tolist()} differ"


@pytest.mark.parametrize("name", DEQUANT_NAMES)
def test_dequantize_bit_identical_with_llama_cpp(wg: dict, name: str) -> None:
    got = dequantize(wg[f"q_{name}"], QT[name], wg["x"].shape)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), wg[f"dq_{name}"].view(np.uint32))


@pytest.mark.parametrize("name", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_quantize_keeps_leading_dims(wg: dict, name: str) -> None:
    x = wg["x"][:8].reshape(2, 4, 512)
    got = quantize(x, QT[name])
    assert got.shape == (2, 4, row_bytes(QT[name], 512))
    np.testing.assert_array_equal(got.reshape(8, -1), wg[f"q_{name}"][:8])
    # rows are independent: one row alone quantizes the same
    np.testing.assert_array_equal(quantize(x[1, 2], QT[name]), wg[f"q_{name}"][6])
    back = dequantize(got, QT[name], x.shape)
    assert back.shape == x.shape


def test_quantize_errors() -> None:
    x = np.zeros((2, 500), np.float32)
    with pytest.raises(QdbgError, match="Q4_K"):
        quantize(x, QT.Q4_K)
    with pytest.raises(UnsupportedError, match="IQ2_XXS"):
        quantize(np.zeros((1, 256), np.float32), QT.IQ2_XXS)
    with pytest.raises(UnsupportedError, match="Q8_K"):
        quantize(np.zeros((1, 256), np.float32), QT.Q8_K)
    with pytest.raises(UnsupportedError, match="12345"):
        quantize(np.zeros((1, 256), np.float32), 12345)  # type: ignore[arg-type]
    with pytest.raises(QdbgError):
        quantize(np.array(["a"] * 32), QT.Q8_0)
    assert set(QUANTIZE_TYPES) == {QT[n] for n in QUANT_NAMES} | {QT.F32}


def test_dequantize_errors() -> None:
    with pytest.raises(QdbgError, match="Q4_0"):
        dequantize(np.zeros(17, np.uint8), QT.Q4_0, (1, 32))
    with pytest.raises(QdbgError):
        dequantize(np.zeros(18, np.uint8), QT.Q4_0, (1, 33))
    with pytest.raises(UnsupportedError, match="Q8_K"):
        dequantize(np.zeros(292, np.uint8), QT.Q8_K, (1, 256))
    with pytest.raises(UnsupportedError, match="777"):
        dequantize(np.zeros(4, np.uint8), 777, (1,))  # type: ignore[arg-type]


def test_f32_roundtrip_and_empty() -> None:
    x = np.arange(64, dtype=np.float32).reshape(2, 32) - 7.5
    np.testing.assert_array_equal(dequantize(quantize(x, QT.F32), QT.F32, x.shape), x)
    assert quantize(np.zeros((0, 256), np.float32), QT.Q4_K).shape == (0, 144)


def test_nearest_int_matches_c_bit_trick() -> None:
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 3.49, -7.5, 4194303.0, np.inf, np.nan], np.float32)
    assert nearest_int(v).tolist() == [0, 2, 2, 0, -2, 3, -8, 4194303, -4194304, 0]


# ---------------------------------------------------------------- activations


def _q8_0_raw(raw: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    b = raw.reshape(rows, -1, 34)
    return b[..., 2:].view(np.int8).reshape(rows, -1), b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)


def test_vec_dot_type_table(ag: dict) -> None:
    recorded = {QT(int(t)): QT(int(v)) for t, v in zip(ag["vdt_types"], ag["vdt_values"])}
    assert recorded == {t: VEC_DOT_TYPE[t] for t in recorded}
    assert set(VEC_DOT_TYPE) == set(QT)


@pytest.mark.parametrize("variant", ["cpu", "ref"])
def test_q8_0_matches_backend(ag: dict, variant: str) -> None:
    x = ag["x"]
    q_want, d_want = _q8_0_raw(ag[f"{variant}_q8_0"], x.shape[0])
    q, d = quantize_q8_0(x, variant)
    np.testing.assert_array_equal(q, q_want)
    np.testing.assert_array_equal(d, d_want)
    rt = round_trip(x, QT.Q8_0, variant)
    np.testing.assert_array_equal(rt, (q_want.reshape(x.shape[0], -1, 32) * d_want[..., None]).reshape(x.shape))


def test_q8_0_variants_differ_on_ties(ag: dict) -> None:
    """The AVX2 kernel (id = 127/amax, half-to-even) and the ref (1/d, roundf) disagree here."""
    x = ag["x"]
    assert not np.array_equal(ag["cpu_q8_0"], ag["ref_q8_0"])
    assert not np.array_equal(round_trip(x, QT.Q8_0, "cpu"), round_trip(x, QT.Q8_0, "ref"))


@pytest.mark.parametrize("variant", ["cpu", "ref"])
def test_q8_1_matches_backend(ag: dict, variant: str) -> None:
    x = ag["x"]
    b = ag[f"{variant}_q8_1"].reshape(x.shape[0], -1, 36)
    q, d, s = quantize_q8_1(x, variant)
    np.testing.assert_array_equal(q, b[..., 4:].view(np.int8).reshape(x.shape[0], -1))
    np.testing.assert_array_equal(d, b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
    s_want = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    np.testing.assert_array_equal(s, s_want)
    np.testing.assert_array_equal(q8_1_sums(x, variant), s_want)
    np.testing.assert_array_equal(round_trip(x, QT.Q8_1, variant), round_trip(x, QT.Q8_0, variant))


@pytest.mark.parametrize("which", ["cpu", "ref"])
def test_q8_K_matches_backend(ag: dict, which: str) -> None:
    x = ag["x"]
    b = ag[f"{which}_q8_K"].reshape(x.shape[0], -1, 292)
    q, d, bsums = quantize_q8_K(x)
    q_want = b[..., 4:260].view(np.int8)
    d_want = b[..., 0:4].copy().view(np.float32)[..., 0]
    np.testing.assert_array_equal(q, q_want.reshape(x.shape[0], -1))
    np.testing.assert_array_equal(d.view(np.uint32), d_want.view(np.uint32))
    np.testing.assert_array_equal(bsums, b[..., 260:].copy().view(np.int16).reshape(x.shape[0], -1))
    want = (q_want.astype(np.float32) * d_want[..., None]).reshape(x.shape)
    np.testing.assert_array_equal(round_trip(x, QT.Q8_K), want)


def _mat4(raw: np.ndarray, n: int, bs: int, dbytes: int, il: int) -> np.ndarray:
    """Dequantized [4, n] values of a block_q8_0x4 / block_q8_Kx4 array interleaved by il."""
    nb = n // bs
    blk = raw.reshape(nb, -1)
    d = blk[:, :4 * dbytes].copy().view(np.float16 if dbytes == 2 else np.float32).astype(np.float32)
    qs = blk[:, 4 * dbytes:4 * dbytes + 4 * bs].view(np.int8).reshape(nb, bs // il, 4, il)
    q = qs.transpose(2, 0, 1, 3).reshape(4, nb, bs).astype(np.float32)
    return (q * d.T[..., None]).reshape(4, n)


def test_repack_quantizers_match_row_quantizers(ag: dict) -> None:
    """AVX2 repack paths (Q4_0 8x8, Q4_K 8x8, IQ4_NL 8x8, MXFP4 8x8) see the same values as the
    row quantizers; the generic 4x4 Q8_0 kernel (not used on x86) matches the ref variant."""
    x = ag["x"][:4]
    n = x.shape[1]
    np.testing.assert_array_equal(_mat4(ag["mat_q8_0_4x8"], n, 32, 2, 8), round_trip(x, QT.Q8_0, "cpu"))
    np.testing.assert_array_equal(_mat4(ag["mat_q8_K_4x8"], n, 256, 4, 8), round_trip(x, QT.Q8_K))
    np.testing.assert_array_equal(_mat4(ag["mat_q8_0_4x4"], n, 32, 2, 4), round_trip(x, QT.Q8_0, "ref"))


def test_q8_K_4x8_may_flip_signs_without_changing_values(ag: dict) -> None:
    """Row 1 has +-amax in its first two Q8_K blocks: the 4x8 kernel negates q and d there."""
    raw = ag["mat_q8_K_4x8"].reshape(4, -1)
    d = raw[:, :16].copy().view(np.float32)                 # [block, row]
    _, d_row, _ = quantize_q8_K(ag["x"][:4])
    assert np.array_equal(np.abs(d.T), np.abs(d_row))
    assert (np.sign(d.T) != np.sign(d_row)).any()


@pytest.mark.parametrize("name,vdt", [("f16", QT.F16), ("bf16", QT.BF16)])
def test_float_activation_conversions(ag: dict, name: str, vdt: QT) -> None:
    x = ag["x"]
    raw = ag[f"cpu_{name}"].reshape(x.shape[0], -1).copy().view(np.uint16).astype(np.uint32)
    want = (raw << 16).view(np.float32) if vdt == QT.BF16 else raw.astype(np.uint16).view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(round_trip(x, vdt), want)
    np.testing.assert_array_equal(round_trip(x, QT.F32), x)


def test_activation_errors() -> None:
    with pytest.raises(QdbgError):
        round_trip(np.zeros((2, 48), np.float32), QT.Q8_0)
    with pytest.raises(QdbgError):
        round_trip(np.zeros((2, 32), np.float32), QT.Q8_0, variant="avx512")
    with pytest.raises(UnsupportedError, match="Q4_K"):
        round_trip(np.zeros((2, 256), np.float32), QT.Q4_K)


_rows = arrays(np.float32, st.tuples(st.integers(1, 3), st.sampled_from([256, 512])),
               elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False))


@settings(max_examples=40, deadline=None)
@given(_rows, st.sampled_from([QT.Q8_0, QT.Q8_1, QT.Q8_K]), st.sampled_from(["cpu", "ref"]))
def test_round_trip_properties(x: np.ndarray, vdt: QT, variant: str) -> None:
    rt = round_trip(x, vdt, variant)
    assert rt.shape == x.shape and rt.dtype == np.float32
    bs = 256 if vdt == QT.Q8_K else 32
    blocks = x.reshape(x.shape[0], -1, bs)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    err = np.abs(rt.reshape(blocks.shape) - blocks)
    # half a step of d = amax/127 plus the fp16 rounding of d (up to 127 * 2^-11 * d), where d
    # is a normal fp16 (tinier blocks lose precision or flush to zero, as in llama.cpp)
    normal = amax[..., 0] >= (127 * 2.0**-14 if vdt != QT.Q8_K else 1e-35)
    assert (err[normal] <= amax[normal] / 127 * 0.57).all()
    assert (np.abs(rt.reshape(blocks.shape))[normal] <= amax[normal] * 1.001).all()
    # a second pass keeps the codes (and, with an fp16 d, the values exactly)
    if vdt == QT.Q8_K:   # up to the sign convention of d (ties of +-amax may flip it)
        q1, d1, _ = quantize_q8_K(x)
        q2, d2, _ = quantize_q8_K(rt)
        s1 = np.repeat(np.sign(d1), 256, axis=-1)
        s2 = np.repeat(np.sign(d2), 256, axis=-1)
        np.testing.assert_array_equal(q2 * s2, q1 * s1)
    else:
        np.testing.assert_array_equal(round_trip(rt, vdt, variant), rt)
    # powers of two commute with Q8_K (its scale stays f32)
    if vdt == QT.Q8_K:
        np.testing.assert_array_equal(round_trip(x * np.float32(4), vdt), rt * np.float32(4))
