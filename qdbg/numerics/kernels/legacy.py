"""Exact CPU matmul of the legacy quant types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) against f32 activations.

Reproduces ggml_compute_forward_mul_mat of the AVX2+FMA+F16C build bit for bit. Dispatch there:
- tiled/ (ggml_tiled_supported) takes only K-quants and IQ types: never these.
- CPU_REPACK Q4_0 (n_out % 8 == 0): x rows in groups of 4 -> ggml_quantize_mat_q8_0_4x8 + gemm,
  the rest -> quantize_row_q8_0 + gemv (arch/x86/repack.cpp). Both quantizers give the same
  codes and both kernels do, per output: acc = fma(f32(int dot of the block), d_w*d_x, acc),
  one accumulator, no horizontal sum.
- plain weights: x -> vec_dot_type (Q8_0 or Q8_1, AVX2 quantize_row_*), then tinyBLAS_Q0_AVX for
  Q4_0/Q5_0/Q8_0 when n_tok >= 2 (any n_out, any k; every tile shape keeps one 8-lane
  accumulator per output and accumulates blocks in order), else ggml_vec_dot_*: the same
  arithmetic. Per output: 8 lanes, lane j += fma(d_w*d_x, f32(sum of products 4j..4j+3)),
  then hsum ((v4+v0)+(v6+v2))+((v5+v1)+(v7+v3)); Q4_1/Q5_1 add summs = fma(m_w, s_x, summs)
  accumulated block by block in scalar f32 (GCC contracts `summs += m*s`).
No output depends on the thread count: each one is computed whole by one thread, and the
activation quantizers split work on block boundaries.
Not modelled: int8 weights of -128 against activations of -128 (only non-finite x gives -128),
where _mm256_sign_epi8 wraps; their outputs are inf/NaN anyway.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from qdbg.errors import QdbgError
from qdbg.numerics.kernels.lg_simd import lg_decode_4, lg_decode_5, lg_decode_8, lg_dot_1, lg_dot_4
from qdbg.numerics.kernels.nb import f16_bits_to_f32, fma32, jit
from qdbg.numerics.kernels.q8k import quantize_q8_32_fast

# type -> (kernel code, bytes per 32-value block)
# Q4_0: 18 B (d:2, qs:16)          v = nibble - 8; low nibbles are values 0..15, high 16..31
# Q4_1: 20 B (d:2, m:2, qs:16)     v = nibble;            x = d*v + m
# Q5_0: 22 B (d:2, qh:4, qs:16)    v = nibble | bit<<4 - 16; bit i of qh (LE u32) for value i
# Q5_1: 24 B (d:2, m:2, qh:4, qs:16) v = nibble | bit<<4;  x = d*v + m
# Q8_0: 34 B (d:2, qs:32)          v = int8
_TYPES: dict[QT, tuple[int, int]] = {
    QT.Q4_0: (0, 18), QT.Q4_1: (1, 20), QT.Q5_0: (2, 22), QT.Q5_1: (3, 24), QT.Q8_0: (4, 34)}
LEGACY_MATMUL_TYPES = tuple(_TYPES)


@jit(inline="always")
def _f16(row, o):
    return f16_bits_to_f32(np.uint16(row[o]) | (np.uint16(row[o + 1]) << np.uint16(8)))


@jit
def _decode_row(row, code, nb, v, d, m):
    """One GGUF row -> int16 values v [nb*32], f32 scales d [nb], f32 mins m [nb] (0 if none)."""
    bsz = (18, 20, 22, 24, 34)[code]
    for b in range(nb):
        d[b] = _f16(row, b * bsz)
        m[b] = _f16(row, b * bsz + 2) if code == 1 or code == 3 else np.float32(0.0)
    if code == 4:                                              # Q8_0
        lg_decode_8(row, nb, 34, 2, 0, 0, v)
    elif code == 0:                                            # Q4_0
        lg_decode_4(row, nb, 18, 2, 0, 8, v)
    elif code == 1:                                            # Q4_1
        lg_decode_4(row, nb, 20, 4, 0, 0, v)
    elif code == 2:                                            # Q5_0
        lg_decode_5(row, nb, 22, 6, 2, 16, v)
    else:                                                      # Q5_1
        lg_decode_5(row, nb, 24, 8, 4, 0, v)


@jit
def _mm_legacy(w, code, n_in, a16, ad, asum, repacked, out):
    """out[t, o] for raw rows w [n_out, row_bytes] and Q8 activations (a16 = codes as int16, ad, asum)."""
    n_out = w.shape[0]
    n_tok = a16.shape[0]
    nb = n_in // 32
    v = np.empty(n_in, np.int16)
    dw = np.empty(nb, np.float32)
    mw = np.empty(nb, np.float32)
    af = a16.reshape(n_tok * n_in)
    adf = ad.reshape(n_tok * nb)
    has_min = code == 1 or code == 3
    res = np.empty(n_tok, np.float32)
    for o in range(n_out):
        _decode_row(w[o], code, nb, v, dw, mw)
        # repacked: one accumulator over whole blocks; else 8 lanes + hsum_float_8 (lg_simd)
        t = 0
        while t + 4 <= n_tok:
            lg_dot_4(v, 0, af, t * n_in, n_in, dw, 0, adf, t * nb, nb, nb, repacked, res, t)
            t += 4
        while t < n_tok:
            lg_dot_1(v, 0, af, t * n_in, n_in, dw, 0, adf, t * nb, nb, nb, repacked, res, t)
            t += 1
        for t in range(n_tok):
            r = res[t]
            if has_min and not repacked:
                summs = np.float32(0.0)
                for b in range(nb):
                    summs = fma32(mw[b], asum[t, b], summs)
                r = r + summs
            out[t, o] = r


def mul_mat_legacy(w_raw: np.ndarray, qtype: QT, n_in: int, x: np.ndarray, repacked: bool) -> np.ndarray:
    """y = what ggml_compute_forward_mul_mat gives for src0 = weight (GGUF bytes, uint8
    [n_out, row_bytes]), src1 = x (float32 [n_tok, n_in], C-contiguous) -> float32 [n_tok, n_out].

    `repacked`: the weight lives in llama.cpp's CPU_REPACK buffer (this build: Q4_0 with
    n_out % 8 == 0); QdbgError for any other repacked combination.
    """
    try:
        qt = QT(qtype)
        code, bsz = _TYPES[qt]
    except (ValueError, KeyError):
        raise QdbgError(f"mul_mat_legacy: {qtype!r} is not one of "
                        f"{', '.join(t.name for t in LEGACY_MATMUL_TYPES)}") from None
    if n_in <= 0 or n_in % 32:
        raise QdbgError(f"mul_mat_legacy: n_in {n_in} is not a positive multiple of 32")
    w = np.asarray(w_raw)
    if w.dtype != np.uint8 or w.ndim != 2 or w.shape[1] != n_in // 32 * bsz:
        raise QdbgError(f"mul_mat_legacy: {qt.name} weight must be uint8 [n_out, {n_in // 32 * bsz}], "
                        f"got {w.dtype} {list(w.shape)}")
    xa = np.ascontiguousarray(x, dtype=np.float32)
    if xa.ndim != 2 or xa.shape[1] != n_in:
        raise QdbgError(f"mul_mat_legacy: x must be float32 [n_tok, {n_in}], got {list(np.shape(x))}")
    if repacked and (qt != QT.Q4_0 or w.shape[0] % 8):
        raise QdbgError(f"mul_mat_legacy: this build never repacks {qt.name} with n_out {w.shape[0]} "
                        "(only Q4_0 with n_out % 8 == 0)")
    w = np.ascontiguousarray(w).view()
    w.flags.writeable = False          # one numba specialization for GGUF memmaps and copies alike
    aq, ad, asum = quantize_q8_32_fast(xa, with_sum=code in (1, 3))   # Q8_1 for Q4_1/Q5_1, else Q8_0
    out = np.empty((xa.shape[0], w.shape[0]), np.float32)
    if xa.shape[0] and w.shape[0]:
        _mm_legacy(w, code, n_in, aq, ad, asum, bool(repacked), out)
    return out
