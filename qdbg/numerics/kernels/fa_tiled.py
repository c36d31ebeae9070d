"""ggml_compute_forward_flash_attn_ext_tiled (ops.cpp) with an F16 K/V cache, bit-exact.

Q tiles of up to 64 rows (bounded by the thread chunk and the head), KV tiles of 64. Per KV tile:
KQ[r, c] = sequential fma chain over dk of Q (F32) x K (simd_gemm), then * scale, then + mask;
a KV tile fully masked for every row of the Q tile is skipped. Per row: tile max; on a new max
VKQ *= expf(Mold - Mnew), S *= ms; P = ggml_v_expf(KQ - M) (ggml_vec_soft_max_f32: 8-lane blocks,
hsum8 in float, blocks summed in double, S = f32(double(S) + sum)); a row whose tile is all -inf
gets P = 0. VKQ[r, d] = sequential fma chain over the tile's keys of P x V (F32). Output VKQ / S.
"""

from __future__ import annotations

import numpy as np

from qdbg.numerics.kernels.nb import f16_bits_to_f32, fma32, hsum8, jit
from qdbg.numerics.kernels.simd_math import expf, tanhf, v_expf

_NEG_INF = np.float32(-np.inf)
TQ = 64   # GGML_FA_TILE_Q
TKV = 64  # GGML_FA_TILE_KV


def q_tiles(n_tok: int, n_head: int, nth: int) -> np.ndarray:
    """(head, first row, rows) of every Q tile, as ggml_compute_forward_flash_attn_ext_f16
    chunks the n_head * n_tok rows for nth threads and the tiled kernel cuts each chunk."""
    nr = n_tok * n_head
    nth_scaled = nth * 4
    chunk_size = (nr + nth_scaled - 1) // nth_scaled
    nchunk = (nr + chunk_size - 1) // chunk_size
    if nth == 1 or nchunk < nth:
        nchunk = nth
    dr = (nr + nchunk - 1) // nchunk
    tiles = []
    for c in range(nchunk):
        ir, ir1 = dr * c, min(dr * c + dr, nr)
        while ir < ir1:
            h, r = divmod(ir, n_tok)
            rows = min(TQ, ir1 - ir, n_tok - r)
            tiles.append((h, r, rows))
            ir += rows
    return np.array(tiles, np.int64).reshape(-1, 3)


@jit
def tiled(q, k, v, mask, scale, softcap, tiles, out):
    """q f32 [n_tok, n_head, DK]; k, v uint16 [n_kv, n_head_kv, D]; mask f32 [n_tok, n_kv];
    scale already divided by softcap (softcap != 0: KQ = tanhf(KQ) * softcap after the scale);
    tiles from q_tiles; out f32 [n_tok, n_head, DV]."""
    n_tok, n_head, dk = q.shape
    n_kv = k.shape[0]
    rk = n_head // k.shape[1]
    rv = n_head // v.shape[1]
    dv = v.shape[2]
    kt = np.empty((dk, TKV), np.float32)   # K tile transposed
    vt = np.zeros((TKV, dv), np.float32)
    kq = np.empty((TQ, TKV), np.float32)
    m32 = np.empty((TQ, TKV), np.float32)
    vkq = np.empty((TQ, dv), np.float32)
    S = np.empty(TQ, np.float32)
    M = np.empty(TQ, np.float32)
    for ti in range(tiles.shape[0]):
        h, r0, rows = tiles[ti, 0], tiles[ti, 1], tiles[ti, 2]
        hk = h // rk
        hv = h // rv
        S[:] = 0.0
        M[:] = _NEG_INF
        vkq[:, :] = 0.0
        for ic in range(0, n_kv, TKV):
            kv_tile = min(TKV, n_kv - ic)
            can_skip = True
            for tq in range(rows):
                for tk in range(kv_tile):
                    mv = mask[r0 + tq, ic + tk]
                    m32[tq, tk] = mv
                    if mv != _NEG_INF:
                        can_skip = False
                for tk in range(kv_tile, TKV):
                    m32[tq, tk] = _NEG_INF
            if can_skip:
                continue
            for tk in range(kv_tile):
                for d in range(dk):
                    kt[d, tk] = f16_bits_to_f32(k[ic + tk, hk, d])
            for tq in range(rows):
                for tk in range(TKV):
                    kq[tq, tk] = 0.0
                for d in range(dk):
                    qv = q[r0 + tq, h, d]
                    for tk in range(TKV):
                        kq[tq, tk] = fma32(qv, kt[d, tk], kq[tq, tk])
                for tk in range(TKV):
                    kq[tq, tk] = kq[tq, tk] * scale
                if softcap != np.float32(0.0):
                    for tk in range(TKV):
                        kq[tq, tk] = tanhf(kq[tq, tk]) * softcap
                for tk in range(kv_tile, TKV):
                    kq[tq, tk] = _NEG_INF
                for tk in range(TKV):
                    kq[tq, tk] = kq[tq, tk] + m32[tq, tk]
                tmax = _NEG_INF
                for tk in range(TKV):
                    if kq[tq, tk] > tmax:
                        tmax = kq[tq, tk]
                if tmax == _NEG_INF:
                    for tk in range(TKV):
                        kq[tq, tk] = 0.0
                    continue
                Mold = M[tq]
                Mnew = max(Mold, tmax)
                if Mnew > Mold:
                    ms = expf(Mold - Mnew)
                    for d in range(dv):
                        vkq[tq, d] = vkq[tq, d] * ms
                    S[tq] = S[tq] * ms
                M[tq] = Mnew
                tot = 0.0
                for tk in range(TKV):
                    kq[tq, tk] = v_expf(kq[tq, tk] - Mnew)
                for b0 in range(0, TKV, 8):
                    tot += np.float64(hsum8(kq[tq, b0:b0 + 8]))
                S[tq] = np.float32(np.float64(S[tq]) + tot)
            for tk in range(kv_tile):
                for d in range(dv):
                    vt[tk, d] = f16_bits_to_f32(v[ic + tk, hv, d])
            for tq in range(rows):
                for tk in range(kv_tile):
                    p = kq[tq, tk]
                    for d in range(dv):
                        vkq[tq, d] = fma32(p, vt[tk, d], vkq[tq, d])
        for tq in range(rows):
            s_inv = np.float32(0.0) if S[tq] == np.float32(0.0) else np.float32(1.0) / S[tq]
            for d in range(dv):
                out[r0 + tq, h, d] = vkq[tq, d] * s_inv
    return out
