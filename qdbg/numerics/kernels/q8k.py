"""The activation quantizers of the matmuls as numba kernels: quantize_row_q8_K (K-quants) and the
AVX2 quantize_row_q8_0 / q8_1 (legacy quants).

The same arithmetic as qdbg.quant.activations.quantize_q8_K (the numpy reference, which the
goldens pin): per 256 values, the first value of largest magnitude (a NaN counts as largest, as
numpy's argmax has it), iscale = -127/that value in float32, q = min(nearest_int(iscale*x), 127)
stored as its low byte, d = 1/iscale (0 for an all-zero block), bsums over 16. tests/
test_kernels_kquants.py holds the two to each other, special values included. It replaces the
numpy version inside the matmuls only because that one took about 1 ms of a 6 ms TinyLlama FFN
matmul (many small temporaries).
"""

from __future__ import annotations

import numpy as np

from qdbg.numerics.kernels.nb import jit, round_f16

F32 = np.float32
_MAGIC = np.float32(12582912.0)


@jit
def quantize_q8_K_rows(x, q, d, bsums):
    """x float32 [n, K] -> q int8 [n, K], d float32 [n, K//256], bsums int16 [n, K//16]."""
    n, k = x.shape
    v = np.empty(256, F32)
    vi = v.view(np.int32)
    for r in range(n):
        for b in range(k // 256):
            o = 256 * b
            idx = 0
            amax = F32(-1.0)
            for j in range(256):
                a = abs(x[r, o + j])
                if np.isnan(a):
                    idx = j
                    break
                if a > amax:
                    amax = a
                    idx = j
            vmax = x[r, o + idx]
            if vmax == 0:
                d[r, b] = F32(0.0)
                for j in range(256):
                    q[r, o + j] = 0
                for s in range(16):
                    bsums[r, 16 * b + s] = 0
                continue
            iscale = F32(-127.0) / vmax
            for j in range(256):
                v[j] = iscale * x[r, o + j] + _MAGIC
            for j in range(256):
                t = (vi[j] & 0x007FFFFF) - 0x00400000
                q[r, o + j] = np.int8(min(t, 127))
            d[r, b] = F32(1.0) / iscale
            for s in range(16):
                t = 0
                for j in range(16):
                    t += q[r, o + 16 * s + j]
                bsums[r, 16 * b + s] = t


def quantize_q8_K_fast(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same result as qdbg.quant.activations.quantize_q8_K for float32 rows [n, K] (K % 256 == 0)."""
    x = np.ascontiguousarray(x, dtype=F32)
    n, k = x.shape
    q = np.empty((n, k), np.int8)
    d = np.empty((n, k // 256), F32)
    bs = np.empty((n, k // 16), np.int16)
    quantize_q8_K_rows(x, q, d, bs)
    return q, d, bs


@jit
def quantize_q8_32_rows(x, with_sum, q, d, s):
    """x float32 [n, K] -> q int16 [n, K] (the int8 codes, widened for the legacy kernels), d float32
    [n, K//32] (the F16-rounded scale), and with_sum: s [n, K//32] = F16(d_f32 * sum(q)) (Q8_1).
    The AVX2 quantize_row_q8_0/q8_1 ("cpu" variant of qdbg.quant.activations): amax over the block
    (a NaN wins), d = amax/127, q = rint(x * (127/amax)) (0 scale for an all-zero block), a code
    that is not a finite int32 becomes -128 (cvtps2dq then saturating packs), clamped to int8."""
    n, k = x.shape
    for r in range(n):
        for b in range(k // 32):
            o = 32 * b
            amax = F32(0.0)
            for j in range(32):
                a = abs(x[r, o + j])
                if np.isnan(a) or a > amax:
                    amax = a
                    if np.isnan(a):
                        break
            dv = amax / F32(127.0)
            ident = F32(127.0) / amax if amax != 0 else F32(0.0)
            tot = 0
            for j in range(32):
                v = np.rint(x[r, o + j] * ident)
                if not abs(v) < F32(2147483648.0):
                    c = -128
                else:
                    c = int(min(max(v, F32(-128.0)), F32(127.0)))
                q[r, o + j] = c
                tot += c
            d[r, b] = round_f16(dv)
            if with_sum:
                s[r, b] = round_f16(dv * F32(tot))


def quantize_q8_32_fast(x: np.ndarray, with_sum: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q int16, d, s) as quantize_q8_0 (s = d, unused) or quantize_q8_1 give them (cpu variant)."""
    x = np.ascontiguousarray(x, dtype=F32)
    n, k = x.shape
    q = np.empty((n, k), np.int16)
    d = np.empty((n, k // 32), F32)
    s = np.empty((n, k // 32), F32) if with_sum else d
    quantize_q8_32_rows(x, with_sum, q, d, s)
    return q, d, s
