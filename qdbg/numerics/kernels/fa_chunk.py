"""ggml_compute_forward_flash_attn_ext_f16_one_chunk (ops.cpp) with an F16 K/V cache, bit-exact,
and the one-token split-KV decode built on it (ggml_flash_attn_ext_reduce_partials).

Per query row: Q rounded to half; for each key ic in [ic0, ic1) whose mask is not -inf:
s = vec_dot_f16(K[ic], Q) * scale + mask; online softmax with libm expf; the V accumulator is
HALF (VKQ16): on a new max VKQ16 = f16(VKQ16 * ms) (ggml_vec_scale_f16), then
VKQ16 = f16(fma(V[ic], vs, VKQ16)) (ggml_vec_mad_f16); S = fma(S, ms, vs).
"""

from __future__ import annotations

import numpy as np

from qdbg.numerics.kernels.fa_dot import dot_f16_scores
from qdbg.numerics.kernels.nb import f16_bits_to_f32, fma32, jit, round_f16
from qdbg.numerics.kernels.simd_math import expf, tanhf

_NEG_INF = np.float32(-np.inf)


@jit(inline="always")
def chunk_row(sc, v, hv, mrow, scale, softcap, ic0, ic1, vkq):
    """One query row over keys [ic0, ic1): sc f32 [n_kv] its vec_dot_f16 scores; v uint16
    [n_kv, n_head_kv, DV], hv its KV head; mrow f32 [n_kv]; scale already divided by softcap
    (when softcap != 0: s = softcap * tanhf(s) before the mask). Writes the unnormalised VKQ (f32 of
    the half accumulator) to vkq; returns (M, S)."""
    dv = v.shape[2]
    for d in range(dv):
        vkq[d] = 0.0  # VKQ16 values (always half-representable)
    S = np.float32(0.0)
    M = _NEG_INF
    for ic in range(ic0, ic1):
        mv = mrow[ic]
        if mv == _NEG_INF:
            continue
        s = sc[ic] * scale
        if softcap != np.float32(0.0):
            s = softcap * tanhf(s)
        s = s + mv
        ms = np.float32(1.0)
        vs = np.float32(1.0)
        if s > M:
            Mold = M
            M = s
            ms = expf(Mold - M)
            for d in range(dv):
                vkq[d] = round_f16(vkq[d] * ms)
        else:
            vs = expf(s - M)
        for d in range(dv):
            vkq[d] = round_f16(fma32(f16_bits_to_f32(v[ic, hv, d]), vs, vkq[d]))
        S = fma32(S, ms, vs)
    return M, S


@jit
def _group_scores(q, k, hk, rk, rows):
    """Scores of the first `rows` tokens of query heads [hk*rk, (hk+1)*rk): f32 [rk*rows, n_kv]
    (row (h - hk*rk)*rows + t)."""
    dk = q.shape[2]
    qg = np.empty((rk * rows, dk), np.float32)
    for g in range(rk):
        for t in range(rows):
            for i in range(dk):
                qg[g * rows + t, i] = round_f16(q[t, hk * rk + g, i])
    sc = np.empty((rk * rows, k.shape[0]), np.float32)
    dot_f16_scores(k, hk, qg, sc)
    return sc


@jit
def one_chunk(q, k, v, mask, scale, softcap, out):
    """All rows, ic over all keys: q f32 [n_tok, n_head, DK]; k, v uint16 [n_kv, n_head_kv, D];
    mask f32 [n_tok, n_kv]; out f32 [n_tok, n_head, DV]."""
    n_tok, n_head, dk = q.shape
    n_kv = k.shape[0]
    rk = n_head // k.shape[1]
    dv = v.shape[2]
    vkq = np.empty(dv, np.float32)
    for hk in range(k.shape[1]):
        sc = _group_scores(q, k, hk, rk, n_tok)
        for g in range(rk):
            h = hk * rk + g
            for t in range(n_tok):
                M, S = chunk_row(sc[g * n_tok + t], v, hk, mask[t], scale, softcap, 0, n_kv, vkq)
                s_inv = np.float32(0.0) if S == np.float32(0.0) else np.float32(1.0) / S
                for d in range(dv):
                    out[t, h, d] = vkq[d] * s_inv
    return out


@jit
def split_decode(q, k, v, mask, scale, softcap, nth, out):
    """One-token decode, KV range split in nth chunks of ceil(n_kv / nth) (one per thread), each
    run by chunk_row, then reduce_partials: per chunk with S != 0, M' = fmaxf(M, Mc),
    a = expf(M - M'), b = expf(Mc - M'), VKQ = fma(VKQ, a, VKQc * b), S = fma(S, a, Sc * b);
    finally VKQ *= 1 / S (if S != 0)."""
    n_tok, n_head, dk = q.shape
    n_kv = k.shape[0]
    rk = n_head // k.shape[1]
    dv = v.shape[2]
    chunk = (n_kv + nth - 1) // nth
    vkq = np.empty(dv, np.float32)
    fin = np.empty(dv, np.float32)
    for hk in range(k.shape[1]):
        sc = _group_scores(q, k, hk, rk, 1)
        for g in range(rk):
            h = hk * rk + g
            Mf = _NEG_INF
            Sf = np.float32(0.0)
            fin[:] = 0.0
            for c in range(nth):
                ic0 = c * chunk
                if ic0 >= n_kv:
                    continue
                Mc, Sc = chunk_row(sc[g], v, hk, mask[0], scale, softcap, ic0, min(ic0 + chunk, n_kv),
                                   vkq)
                if Sc == np.float32(0.0):
                    continue
                Mn = max(Mf, Mc)
                a = expf(Mf - Mn)
                b = expf(Mc - Mn)
                for d in range(dv):
                    fin[d] = fma32(fin[d], a, vkq[d] * b)
                Sf = fma32(Sf, a, Sc * b)
                Mf = Mn
            if Sf != np.float32(0.0):
                s_inv = np.float32(1.0) / Sf
                for d in range(dv):
                    fin[d] = fin[d] * s_inv
            for d in range(dv):
                out[0, h, d] = fin[d]
    return out
