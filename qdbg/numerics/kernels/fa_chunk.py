"""ggml_compute_forward_flash_attn_ext_f16_one_chunk (ops.cpp) with an F16 K/V cache, bit-exact,
and the one-token split-KV decode built on it (ggml_flash_attn_ext_reduce_partials).

Per query row: Q rounded to half; for each key ic in [ic0, ic1) whose mask is not -inf:
s = vec_dot_f16(K[ic], Q) * scale + mask; online softmax with libm expf; the V accumulator is
HALF (VKQ16): on a new max VKQ16 = f16(VKQ16 * ms) (ggml_vec_scale_f16), then
VKQ16 = f16(fma(V[ic], vs, VKQ16)) (ggml_vec_mad_f16); S = fma(S, ms, vs).
"""

from __future__ import annotations

import numpy as np

from qdbg.numerics.kernels.fa_math import expf, vec_dot_f16_f32q
from qdbg.numerics.kernels.nb import f16_bits_to_f32, fma32, jit, round_f16

_NEG_INF = np.float32(-np.inf)


@jit
def chunk_row(qh, k, v, mrow, scale, ic0, ic1, vkq):
    """One query row against keys [ic0, ic1): qh f32 (half-rounded) [DK]; k, v uint16 [n_kv, D]
    (one KV head); mrow f32 [n_kv]. Writes the unnormalised VKQ (f32 of the half accumulator) to
    vkq; returns (M, S)."""
    dv = v.shape[1]
    acc = np.zeros(dv, np.float32)  # VKQ16 values (always half-representable)
    S = np.float32(0.0)
    M = _NEG_INF
    for ic in range(ic0, ic1):
        mv = mrow[ic]
        if mv == _NEG_INF:
            continue
        s = vec_dot_f16_f32q(k[ic], qh)
        s = s * scale
        s = s + mv
        ms = np.float32(1.0)
        vs = np.float32(1.0)
        if s > M:
            Mold = M
            M = s
            ms = expf(Mold - M)
            for d in range(dv):
                acc[d] = round_f16(acc[d] * ms)
        else:
            vs = expf(s - M)
        vrow = v[ic]
        for d in range(dv):
            acc[d] = round_f16(fma32(f16_bits_to_f32(vrow[d]), vs, acc[d]))
        S = fma32(S, ms, vs)
    for d in range(dv):
        vkq[d] = acc[d]
    return M, S


@jit
def one_chunk(q, k, v, mask, scale, out):
    """All rows, ic over all keys: q f32 [n_tok, n_head, DK]; k, v uint16 [n_kv, n_head_kv, D];
    mask f32 [n_tok, n_kv]; out f32 [n_tok, n_head, DV]."""
    n_tok, n_head, dk = q.shape
    n_kv = k.shape[0]
    rk = n_head // k.shape[1]
    rv = n_head // v.shape[1]
    dv = v.shape[2]
    qh = np.empty(dk, np.float32)
    vkq = np.empty(dv, np.float32)
    for h in range(n_head):
        kh = np.ascontiguousarray(k[:, h // rk, :])
        vh = np.ascontiguousarray(v[:, h // rv, :])
        for t in range(n_tok):
            for i in range(dk):
                qh[i] = round_f16(q[t, h, i])
            M, S = chunk_row(qh, kh, vh, mask[t], scale, 0, n_kv, vkq)
            s_inv = np.float32(0.0) if S == np.float32(0.0) else np.float32(1.0) / S
            for d in range(dv):
                out[t, h, d] = vkq[d] * s_inv
    return out


@jit
def split_decode(q, k, v, mask, scale, nth, out):
    """One-token decode, KV range split in nth chunks of ceil(n_kv / nth) (one per thread), each
    run by chunk_row, then reduce_partials: per chunk with S != 0, M' = fmaxf(M, Mc),
    a = expf(M - M'), b = expf(Mc - M'), VKQ = fma(VKQ, a, VKQc * b), S = fma(S, a, Sc * b);
    finally VKQ *= 1 / S (if S != 0)."""
    n_tok, n_head, dk = q.shape
    n_kv = k.shape[0]
    rk = n_head // k.shape[1]
    rv = n_head // v.shape[1]
    dv = v.shape[2]
    chunk = (n_kv + nth - 1) // nth
    qh = np.empty(dk, np.float32)
    vkq = np.empty(dv, np.float32)
    fin = np.empty(dv, np.float32)
    for h in range(n_head):
        kh = np.ascontiguousarray(k[:, h // rk, :])
        vh = np.ascontiguousarray(v[:, h // rv, :])
        for i in range(dk):
            qh[i] = round_f16(q[0, h, i])
        Mf = _NEG_INF
        Sf = np.float32(0.0)
        fin[:] = 0.0
        for c in range(nth):
            ic0 = c * chunk
            if ic0 >= n_kv:
                continue
            Mc, Sc = chunk_row(qh, kh, vh, mask[0], scale, ic0, min(ic0 + chunk, n_kv), vkq)
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
