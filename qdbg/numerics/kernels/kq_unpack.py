"""Row unpackers for K-quant weights (GGUF bytes -> integer weights, scales, mins, d, dmin).

Every K-quant matmul kernel of the reference build multiplies integer codes exactly, scales the
integer sums per sub-block, and only then goes to float, so a weight row is unpacked once into:

    w   int8 [n_in]       the code of each element
    sc  int32 [nb, 16]    scale of each 16-element sub-block (Q4_K/Q5_K: a 32-block's scale twice)
    mn  int32 [nb, 16]    sub-block min (Q2_K: 16 per block, Q4_K/Q5_K: 8 per block)
    d   float32 [nb]      fp16 super-block scale
    dm  float32 [nb]      fp16 super-block min scale (0 when the type has none)

Codes are the ones the kernels multiply: Q2_K 0..3, Q3_K -4..3 (2 low bits, minus 4 when the
hmask bit is clear), Q4_K 0..15, Q5_K 0..31, Q6_K 0..63 (unsigned: the -32 is applied through
the activation block sums, as both the vec_dot and the tiled kernels do).

Block layouts (ggml-common.h), 256 elements each:
    Q2_K  84 B: scales[16] (lo4 scale, hi4 min) | qs[64] | d | dmin
    Q3_K 110 B: hmask[32] | qs[64] | scales[12] (6-bit, biased 32) | d
    Q4_K 144 B: d | dmin | scales[12] (6-bit scale/min pairs) | qs[128]
    Q5_K 176 B: d | dmin | scales[12] | qh[32] | qs[128]
    Q6_K 210 B: ql[128] | qh[64] | scales[16] (int8) | d
"""

from __future__ import annotations

import numpy as np

from qdbg.numerics.kernels.nb import f16_bits_to_f32, jit

# type code used inside the kernels (one compiled specialization for all five types)
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 2, 3, 4, 5, 6
BLOCK_BYTES = {Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210}


@jit(inline="always")
def _f16(row, o):
    return f16_bits_to_f32(np.uint16(row[o] | (row[o + 1] << 8)))


@jit(inline="always")
def _scale_min_k4(x, o, j):
    """get_scale_min_k4 on the 12 scale bytes x[o:o+12] (Q4_K/Q5_K): sub-block j -> (scale, min)."""
    if j < 4:
        return np.int32(x[o + j] & 63), np.int32(x[o + j + 4] & 63)
    sc = (x[o + j + 4] & 0xF) | ((x[o + j - 4] >> 6) << 4)
    mn = (x[o + j + 4] >> 4) | ((x[o + j] >> 6) << 4)
    return np.int32(sc), np.int32(mn)


@jit
def unpack_row(x, qt, nb, w, sc, mn, d, dm):
    """One GGUF row (its bytes widened to int32 [nb*block_bytes]) into w/sc/mn/d/dm.
    Plain offsets, no slices in the loops: numba slices cost reference-count updates."""
    bb = 84 if qt == Q2_K else 110 if qt == Q3_K else 144 if qt == Q4_K else 176 if qt == Q5_K else 210
    for b in range(nb):
        xb = b * bb
        o = b * 256
        if qt == Q2_K:
            d[b] = _f16(x, xb + 80)
            dm[b] = _f16(x, xb + 82)
            for s in range(16):
                sc[b, s] = x[xb + s] & 0xF
                mn[b, s] = x[xb + s] >> 4
            for j in range(2):              # e = j*128 + l*32 + i; code = qs[j*32+i] >> 2l
                for l in range(4):
                    for i in range(32):
                        w[o + j * 128 + l * 32 + i] = np.int8((x[xb + 16 + j * 32 + i] >> (2 * l)) & 3)
        elif qt == Q3_K:
            d[b] = _f16(x, xb + 108)
            dm[b] = np.float32(0.0)
            for s in range(16):             # 6-bit scales: low 4 from bytes 0..7, high 2 from 8..11
                lo = (x[xb + 96 + s] & 0xF) if s < 8 else (x[xb + 96 + s - 8] >> 4)
                hi = (x[xb + 96 + 8 + s % 4] >> (2 * (s // 4))) & 3
                sc[b, s] = (lo | (hi << 4)) - 32
                mn[b, s] = 0
            for j in range(2):              # e = j*128 + l*32 + i; hmask bit 4j+l of byte i
                for l in range(4):
                    for i in range(32):
                        w[o + j * 128 + l * 32 + i] = np.int8(((x[xb + 32 + j * 32 + i] >> (2 * l)) & 3) - 4
                                                              + 4 * ((x[xb + i] >> (4 * j + l)) & 1))
        elif qt == Q4_K or qt == Q5_K:
            d[b] = _f16(x, xb + 0)
            dm[b] = _f16(x, xb + 2)
            for j in range(8):
                s, m = _scale_min_k4(x, xb + 4, j)
                sc[b, 2 * j] = s
                sc[b, 2 * j + 1] = s
                mn[b, j] = m
                mn[b, 8 + j] = 0
            if qt == Q4_K:
                for j in range(4):          # e = j*64 + l*32 + i; nibble l of qs[j*32+i]
                    for i in range(32):
                        v = x[xb + 16 + j * 32 + i]
                        w[o + j * 64 + i] = np.int8(v & 0xF)
                        w[o + j * 64 + 32 + i] = np.int8(v >> 4)
            else:                           # Q5_K: 5th bit from qh bit 2j+l
                for j in range(4):
                    for i in range(32):
                        v = x[xb + 48 + j * 32 + i]
                        h = x[xb + 16 + i] >> (2 * j)
                        w[o + j * 64 + i] = np.int8((v & 0xF) | ((h & 1) << 4))
                        w[o + j * 64 + 32 + i] = np.int8((v >> 4) | ((h & 2) << 3))
        else:
            d[b] = _f16(x, xb + 208)
            dm[b] = np.float32(0.0)
            for s in range(16):
                v = x[xb + 192 + s]
                sc[b, s] = v - 256 if v >= 128 else v
                mn[b, s] = 0
            for j in range(2):              # e = j*128 + l*32 + i; low 4 from ql, high 2 from qh
                for i in range(32):
                    h = x[xb + 128 + j * 32 + i]
                    a = x[xb + j * 64 + i]
                    c = x[xb + j * 64 + 32 + i]
                    w[o + j * 128 + i] = np.int8((a & 0xF) | ((h & 3) << 4))
                    w[o + j * 128 + 32 + i] = np.int8((c & 0xF) | ((h & 12) << 2))
                    w[o + j * 128 + 64 + i] = np.int8((a >> 4) | (h & 48))
                    w[o + j * 128 + 96 + i] = np.int8((c >> 4) | ((h & 192) >> 2))
