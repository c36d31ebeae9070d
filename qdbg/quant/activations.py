"""Activation (src1) quantization of llama.cpp's CPU matmul, for the `ggml` numeric mode.

Before a MUL_MAT the CPU backend converts each f32 activation row to the weight type's
`vec_dot_type` (ggml-cpu.c, type_traits_cpu) and the integer dot product then sees only those
codes. Which quantizer runs depends on the build; this module reproduces the x86 AVX2+FMA+F16C
build (the one llama-cpp-python ships here), checked against that library by
tests/test_quant.py with golden data from tools/record_quant_golden.py:

- Q8_0 (`quantize_row_q8_0`, AVX2): amax over the block, d = amax/127 stored as fp16,
  id = 127/amax (not 1/d), q = round-half-to-even(x*id).
- Q8_1 (`quantize_row_q8_1`, AVX2): as Q8_0, plus s = fp16(d * sum(q)) with the f32 d.
- Q8_K (`quantize_row_q8_K` = `quantize_row_q8_K_ref`): max = first element of largest |x|,
  iscale = -127/max, q = min(127, nearest_int(iscale*x)), d = 1/iscale kept as f32.
- F16 / BF16: round-to-nearest-even conversions; F32: nothing.

REPACK path (repack.cpp; AVX2 picks Q4_0 -> q4_0_8x8_q8_0, Q4_K -> q4_K_8x8_q8_K, IQ4_NL and
MXFP4 -> *_8x8_q8_0, only when the weight has a multiple of 8 rows): groups of 4 activation rows
go through `ggml_quantize_mat_q8_0_4x8` / `ggml_quantize_mat_q8_K_4x8`, leftover rows through
the row quantizers above. On AVX2 the 4x8 Q8_0 kernel does the same arithmetic as
`quantize_row_q8_0`; the 4x8 Q8_K kernel may negate both q and d of a block whose largest
magnitude occurs with both signs, which leaves every q*d (and every dot product) unchanged. So
one variant, "cpu", covers row and repack paths. Variant "ref" is the scalar `*_ref` code
(d = amax/127, id = 1/d, roundf half-away-from-zero), used by non-SIMD builds, by the generic
4x4 repack kernels, and by `ggml_quantize_chunk` for Q8_0 weights.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from qdbg.errors import QdbgError, UnsupportedError
from qdbg.quant.kquants import F32, fp16_bits, fp16_value, nearest_int

# weight type -> type the activation is converted to (ggml-cpu.c type_traits_cpu, as reported by
# ggml_get_type_traits_cpu of the installed build); entries the table leaves zero-initialised
# (Q8_K, I8..I64, F64: no CPU matmul) read F32 there and here.
VEC_DOT_TYPE: dict[QT, QT] = {t: QT.F32 for t in QT}
VEC_DOT_TYPE.update({
    QT.F16: QT.F16, QT.BF16: QT.BF16,
    QT.Q4_0: QT.Q8_0, QT.Q5_0: QT.Q8_0, QT.Q8_0: QT.Q8_0, QT.IQ4_NL: QT.Q8_0,
    QT.MXFP4: QT.Q8_0, QT.NVFP4: QT.Q8_0, QT.Q1_0: QT.Q8_0,
    QT.Q4_1: QT.Q8_1, QT.Q5_1: QT.Q8_1, QT.Q8_1: QT.Q8_1,
    QT.Q2_K: QT.Q8_K, QT.Q3_K: QT.Q8_K, QT.Q4_K: QT.Q8_K, QT.Q5_K: QT.Q8_K, QT.Q6_K: QT.Q8_K,
    QT.IQ2_XXS: QT.Q8_K, QT.IQ2_XS: QT.Q8_K, QT.IQ2_S: QT.Q8_K, QT.IQ3_XXS: QT.Q8_K,
    QT.IQ3_S: QT.Q8_K, QT.IQ1_S: QT.Q8_K, QT.IQ1_M: QT.Q8_K, QT.IQ4_XS: QT.Q8_K,
    QT.TQ1_0: QT.Q8_K, QT.TQ2_0: QT.Q8_K,
})

_BLOCK = {QT.Q8_0: 32, QT.Q8_1: 32, QT.Q8_K: 256}
VARIANTS = ("cpu", "ref")


def _blocks(x: np.ndarray, bs: int) -> np.ndarray:
    """[..., K] f32 -> [..., K//bs, bs]; QdbgError when K is not a multiple of bs."""
    x = np.asarray(x, dtype=F32)
    if x.ndim == 0 or x.shape[-1] % bs:
        raise QdbgError(f"activation row length {x.shape[-1] if x.ndim else 0} is not a multiple of {bs}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // bs, bs)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise QdbgError(f"unknown activation quantizer variant {variant!r} (expected one of {VARIANTS})")


def _q8_32(x: np.ndarray, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shared Q8_0/Q8_1 body -> (q int8 [..., nb, 32], d_f32 [..., nb], d_fp16 [..., nb])."""
    _check_variant(variant)
    xb = _blocks(x, 32)
    amax = np.max(np.abs(xb), axis=-1)                     # [..., nb]
    d = amax / F32(127)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if variant == "cpu":
            ident = np.where(amax != 0, F32(127) / amax, F32(0))
            q = np.rint(xb * ident[..., None])
        else:
            ident = np.where(d != 0, F32(1) / d, F32(0))
            a = np.abs(xb * ident[..., None])
            fl = np.floor(a)                               # roundf, half away from zero; exact:
            q = np.copysign(fl + np.floor(F32(2) * (a - fl)), xb)  # a - fl and 2*(.) are exact
        # float -> int8 as the machine code does it: AVX2 cvtps2dq gives INT_MIN for inf/nan/huge
        # (then saturating packs -> -128); the scalar ref's truncating store keeps the low byte 0
        bad = ~(np.abs(q) < F32(2.0**31))
        q = np.clip(np.where(bad, F32(-128 if variant == "cpu" else 0), q), -128, 127).astype(np.int8)
    return q, d, fp16_value(fp16_bits(d))


def quantize_q8_0(x: np.ndarray, variant: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Rows [..., K] -> (q int8 [..., K], d float32 [..., K//32], the fp16-rounded block scale)."""
    q, _, d16 = _q8_32(x, variant)
    return q.reshape(*q.shape[:-2], -1), d16


def quantize_q8_1(x: np.ndarray, variant: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows [..., K] -> (q int8 [..., K], d [..., K//32], s [..., K//32]); d and s fp16-rounded.

    s = fp16(d_f32 * sum(q)): the per-block term Q4_1/Q5_1 dot products multiply with the min.
    """
    q, d, d16 = _q8_32(x, variant)
    qsum = q.astype(np.int32).sum(axis=-1).astype(F32)
    s = fp16_value(fp16_bits(d * qsum))
    return q.reshape(*q.shape[:-2], -1), d16, s


def quantize_q8_K(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows [..., K] -> (q int8 [..., K], d float32 [..., K//256], bsums int16 [..., K//16]).

    One code path serves both variants: the AVX2 build calls the reference quantizer.
    """
    xb = _blocks(x, 256)
    idx = np.argmax(np.abs(xb), axis=-1)[..., None]        # first largest |x|, as the C loop
    vmax = np.take_along_axis(xb, idx, axis=-1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-127) / vmax
        qi = np.minimum(nearest_int(iscale[..., None] * xb), 127)   # C stores the low byte
        d = F32(1) / iscale
    zero = vmax == 0
    q = np.where(zero[..., None], 0, qi & 0xFF).astype(np.uint8).view(np.int8)
    d = np.where(zero, F32(0), d).astype(F32)
    bsums = q.reshape(*q.shape[:-1], 16, 16).astype(np.int16).sum(axis=-1, dtype=np.int16)
    return q.reshape(*q.shape[:-2], -1), d, bsums.reshape(*bsums.shape[:-2], -1)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """f32 -> bf16 -> f32 as ggml_cpu_fp32_to_bf16 (round-to-nearest-even, NaN kept quiet)."""
    u = np.asarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, (u & 0xFFFF0000) | 0x00400000, ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) << 16)
    return (r & 0xFFFFFFFF).astype(np.uint32).view(F32)


def round_trip(x: np.ndarray, vec_dot_type: QT, variant: str = "cpu") -> np.ndarray:
    """Rows [..., K] -> the f32 values the CPU dot product sees after converting to vec_dot_type.

    Q8_0/Q8_1: q*d with fp16 d (exact in f32). Q8_K: q*d with the f32 d, rounded once to f32;
    use quantize_q8_K for the exact (q, d) pair. Unknown target types raise UnsupportedError.
    """
    vdt = QT(vec_dot_type)
    x = np.asarray(x, dtype=F32)
    if vdt == QT.F32:
        return x.copy()
    if vdt == QT.F16:
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(F32)
    if vdt == QT.BF16:
        return bf16_round(x)
    if vdt == QT.Q8_0 or vdt == QT.Q8_1:
        q, d = quantize_q8_0(x, variant)
    elif vdt == QT.Q8_K:
        q, d, _ = quantize_q8_K(x)
    else:
        raise UnsupportedError(f"no activation quantizer for vec_dot_type {vdt.name}")
    bs = _BLOCK[vdt]
    out = q.reshape(*q.shape[:-1], -1, bs).astype(F32) * d[..., None]
    return out.reshape(x.shape)


def q8_1_sums(x: np.ndarray, variant: str = "cpu") -> np.ndarray:
    """Rows [..., K] -> per-block s = fp16(d*sum(q)) [..., K//32] of the Q8_1 activation."""
    return quantize_q8_1(x, variant)[2]
