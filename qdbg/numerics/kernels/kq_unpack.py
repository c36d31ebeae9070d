"""Row unpackers for K-quant weights (GGUF bytes -> integer weights, scales, mins, d, dmin).

Every K-quant matmul kernel of the reference build multiplies integer codes exactly, scales the
integer sums per sub-block, and only then goes to float, so a weight row is unpacked once into
(unpack_scales on the row's bytes; stage_row + unpack_codes for the codes, 8 per 64-bit op):

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
    return f16_bits_to_f32(np.uint16(np.int32(row[o]) | (np.int32(row[o + 1]) << 8)))


@jit(inline="always")
def _scale_min_k4(x, o, j):
    """get_scale_min_k4 on the 12 scale bytes x[o:o+12] (Q4_K/Q5_K): sub-block j -> (scale, min)."""
    if j < 4:
        return np.int32(x[o + j]) & 63, np.int32(x[o + j + 4]) & 63
    sc = (np.int32(x[o + j + 4]) & 0xF) | ((np.int32(x[o + j - 4]) >> 6) << 4)
    mn = (np.int32(x[o + j + 4]) >> 4) | ((np.int32(x[o + j]) >> 6) << 4)
    return np.int32(sc), np.int32(mn)


@jit
def unpack_scales(x, qt, nb, sc, mn, d, dm):
    """Scales, mins, d, dmin of one GGUF row (its bytes, uint8 or widened, [nb*block_bytes]). Only the
    mins a type has are written (Q4_K/Q5_K: mn[:, :8]; none for Q3_K, Q6_K): the caller zeroes mn once."""
    bb = 84 if qt == Q2_K else 110 if qt == Q3_K else 144 if qt == Q4_K else 176 if qt == Q5_K else 210
    for b in range(nb):
        xb = b * bb
        if qt == Q2_K:
            d[b] = _f16(x, xb + 80)
            dm[b] = _f16(x, xb + 82)
            for s in range(16):
                sc[b, s] = np.int32(x[xb + s]) & 0xF
                mn[b, s] = np.int32(x[xb + s]) >> 4
        elif qt == Q3_K:
            d[b] = _f16(x, xb + 108)
            dm[b] = np.float32(0.0)
            for s in range(16):             # 6-bit scales: low 4 from bytes 0..7, high 2 from 8..11
                lo = (np.int32(x[xb + 96 + s]) & 0xF) if s < 8 else (np.int32(x[xb + 96 + s - 8]) >> 4)
                hi = (np.int32(x[xb + 96 + 8 + s % 4]) >> (2 * (s // 4))) & 3
                sc[b, s] = (lo | (hi << 4)) - 32
        elif qt == Q4_K or qt == Q5_K:
            d[b] = _f16(x, xb + 0)
            dm[b] = _f16(x, xb + 2)
            for j in range(8):
                s, m = _scale_min_k4(x, xb + 4, j)
                sc[b, 2 * j] = s
                sc[b, 2 * j + 1] = s
                mn[b, j] = m
        else:
            d[b] = _f16(x, xb + 208)
            dm[b] = np.float32(0.0)
            for s in range(16):
                sc[b, s] = np.int32(np.int8(x[xb + 192 + s]))


# per-byte masks for SWAR on 8 codes at once (little-endian: byte i of a word = element i)
_M1 = np.uint64(0x0101010101010101)
_M3 = np.uint64(0x0303030303030303)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_FC = np.uint64(0xFC)
_U = np.uint64


@jit
def stage_row(row, qt, nb, st):
    """Copy the row's blocks into st (uint8) at a stride rounded up to whole 8-byte words."""
    bb = 84 if qt == Q2_K else 110 if qt == Q3_K else 144 if qt == Q4_K else 176 if qt == Q5_K else 210
    sb = 8 * ((bb + 7) // 8)
    for b in range(nb):
        for i in range(bb):
            st[b * sb + i] = row[b * bb + i]


@jit
def unpack_codes(x, qt, nb, w):
    """Codes of a staged row (x: its uint64 words) into w (the int8 codes viewed as uint64),
    8 codes per word operation."""
    nw = 11 if qt == Q2_K else 14 if qt == Q3_K else 18 if qt == Q4_K else 22 if qt == Q5_K else 27
    for b in range(nb):
        xb = b * nw
        o = b * 32
        if qt == Q2_K:                      # qs: words 2..9; e = j*128 + l*32 + i
            for j in range(2):
                for l in range(4):
                    for u in range(4):
                        w[o + 16 * j + 4 * l + u] = (x[xb + 2 + 4 * j + u] >> _U(2 * l)) & _M3
        elif qt == Q3_K:                    # hmask: words 0..3, qs: words 4..11
            for j in range(2):
                for l in range(4):
                    for u in range(4):
                        low = (x[xb + 4 + 4 * j + u] >> _U(2 * l)) & _M3
                        clear = (~x[xb + u] >> _U(4 * j + l)) & _M1
                        w[o + 16 * j + 4 * l + u] = low | (clear * _FC)   # int8 low2 - 4 when clear
        elif qt == Q4_K:                    # qs: words 2..17; e = j*64 + l*32 + i
            for j in range(4):
                for u in range(4):
                    v = x[xb + 2 + 4 * j + u]
                    w[o + 8 * j + u] = v & _M4
                    w[o + 8 * j + 4 + u] = (v >> _U(4)) & _M4
        elif qt == Q5_K:                    # qh: words 2..5, qs: words 6..21
            for j in range(4):
                for u in range(4):
                    v = x[xb + 6 + 4 * j + u]
                    h = x[xb + 2 + u]
                    w[o + 8 * j + u] = (v & _M4) | (((h >> _U(2 * j)) & _M1) << _U(4))
                    w[o + 8 * j + 4 + u] = ((v >> _U(4)) & _M4) | (((h >> _U(2 * j + 1)) & _M1) << _U(4))
        else:                               # Q6_K ql: words 0..15, qh: words 16..23
            for j in range(2):
                for u in range(4):
                    h = x[xb + 16 + 4 * j + u]
                    a = x[xb + 8 * j + u]
                    c = x[xb + 8 * j + 4 + u]
                    w[o + 16 * j + u] = (a & _M4) | ((h & _M3) << _U(4))
                    w[o + 16 * j + 4 + u] = (c & _M4) | (((h >> _U(2)) & _M3) << _U(4))
                    w[o + 16 * j + 8 + u] = ((a >> _U(4)) & _M4) | (((h >> _U(4)) & _M3) << _U(4))
                    w[o + 16 * j + 12 + u] = ((c >> _U(4)) & _M4) | (((h >> _U(6)) & _M3) << _U(4))
