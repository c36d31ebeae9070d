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
def _scale_min_k4(s, j):
    """get_scale_min_k4 on the 12 scale bytes s (Q4_K/Q5_K): sub-block j -> (scale, min)."""
    if j < 4:
        return np.int32(s[j] & 63), np.int32(s[j + 4] & 63)
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)
    mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4)
    return np.int32(sc), np.int32(mn)


@jit
def unpack_row(row, qt, nb, w, sc, mn, d, dm):
    """One GGUF row (its bytes widened to int32 [nb*block_bytes]) into w/sc/mn/d/dm."""
    bb = 84 if qt == Q2_K else 110 if qt == Q3_K else 144 if qt == Q4_K else 176 if qt == Q5_K else 210
    for b in range(nb):
        x = row[b * bb:(b + 1) * bb]
        o = b * 256
        if qt == Q2_K:
            d[b] = _f16(x, 80)
            dm[b] = _f16(x, 82)
            for s in range(16):
                sc[b, s] = x[s] & 0xF
                mn[b, s] = x[s] >> 4
            for j in range(2):              # e = j*128 + l*32 + i; code = qs[j*32+i] >> 2l
                qs = x[16 + j * 32:48 + j * 32]
                for l in range(4):
                    wb = w[o + j * 128 + l * 32:o + j * 128 + l * 32 + 32]
                    for i in range(32):
                        wb[i] = np.int8((qs[i] >> (2 * l)) & 3)
        elif qt == Q3_K:
            d[b] = _f16(x, 108)
            dm[b] = np.float32(0.0)
            for s in range(16):             # 6-bit scales: low 4 from bytes 0..7, high 2 from 8..11
                lo = (x[96 + s] & 0xF) if s < 8 else (x[96 + s - 8] >> 4)
                hi = (x[96 + 8 + s % 4] >> (2 * (s // 4))) & 3
                sc[b, s] = (lo | (hi << 4)) - 32
                mn[b, s] = 0
            hm = x[0:32]
            for j in range(2):              # e = j*128 + l*32 + i; hmask bit 4j+l of byte i
                qs = x[32 + j * 32:64 + j * 32]
                for l in range(4):
                    wb = w[o + j * 128 + l * 32:o + j * 128 + l * 32 + 32]
                    for i in range(32):
                        wb[i] = np.int8(((qs[i] >> (2 * l)) & 3) - 4 + 4 * ((hm[i] >> (4 * j + l)) & 1))
        elif qt == Q4_K or qt == Q5_K:
            d[b] = _f16(x, 0)
            dm[b] = _f16(x, 2)
            s12 = x[4:16]
            qh = x[16:48]
            for j in range(4):              # e = j*64 + l*32 + i; nibble l of qs[j*32+i]
                qs = x[16 + j * 32:48 + j * 32] if qt == Q4_K else x[48 + j * 32:80 + j * 32]
                for l in range(2):
                    s, m = _scale_min_k4(s12, 2 * j + l)
                    sc[b, 4 * j + 2 * l] = s
                    sc[b, 4 * j + 2 * l + 1] = s
                    mn[b, 2 * j + l] = m
                    wb = w[o + j * 64 + l * 32:o + j * 64 + l * 32 + 32]
                    if qt == Q4_K:
                        for i in range(32):
                            wb[i] = np.int8((qs[i] >> (4 * l)) & 0xF)
                    else:                   # Q5_K: 5th bit from qh bit 2j+l
                        for i in range(32):
                            wb[i] = np.int8(((qs[i] >> (4 * l)) & 0xF) | (((qh[i] >> (2 * j + l)) & 1) << 4))
            for s in range(8, 16):
                mn[b, s] = 0
        else:
            d[b] = _f16(x, 208)
            dm[b] = np.float32(0.0)
            for s in range(16):
                sc[b, s] = x[192 + s] - 256 if x[192 + s] >= 128 else x[192 + s]
                mn[b, s] = 0
            for j in range(2):              # e = j*128 + l*32 + i; low 4 from ql, high 2 from qh
                qh = x[128 + j * 32:160 + j * 32]
                for l in range(4):
                    ql = x[j * 64 + (l % 2) * 32:j * 64 + (l % 2) * 32 + 32]
                    sh = 4 * (l // 2)
                    wb = w[o + j * 128 + l * 32:o + j * 128 + l * 32 + 32]
                    for i in range(32):
                        wb[i] = np.int8(((ql[i] >> sh) & 0xF) | (((qh[i] >> (2 * l)) & 3) << 4))
