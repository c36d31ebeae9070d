"""K-quant weight quantizers (Q2_K..Q6_K), byte-identical with llama.cpp's reference path.

These port what `llama_model_quantize` runs without an importance matrix: `quantize_qN_K(...,
imatrix=NULL)` -> `quantize_row_qN_K_ref` with its helpers `make_qkx2_quants`, `make_qx_quants`,
`make_q3_quants` and `nearest_int` (ggml/src/ggml-quants.c). ggml-base is built without FMA and
without -ffast-math, so every float32 operation, its association order and every sequential sum
is reproduced here exactly in float32.

Layout convention of the kernels: a group of n values per sub-block is held element-major as
`[n, M]` (M sub-blocks side by side), so the C loops over i become loops of n vector ops over all
sub-blocks at once and the running sums keep C's left-to-right order.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
QK_K = 256
GROUP_MAX_EPS = F32(1e-15)
_MAGIC = F32(12582912.0)
_CHUNK = 512  # super-blocks per chunk: keeps the [n, M] work arrays cache-sized


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5*2^23 in float32 and read the mantissa bits (half-to-even).

    Reproduces the C bit trick exactly, including what it yields for inf/nan/out-of-range input.
    """
    v = np.asarray(v, dtype=F32)
    with np.errstate(invalid="ignore", over="ignore"):
        return ((v + _MAGIC).view(np.int32) & 0x007FFFFF) - 0x00400000


def fp16_bits(v: np.ndarray) -> np.ndarray:
    """float32 -> IEEE half bits, round-to-nearest-even (as ggml_fp32_to_fp16)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(v, dtype=F32).astype(np.float16).view(np.uint16)


def fp16_value(bits: np.ndarray) -> np.ndarray:
    """IEEE half bits -> float32 (exact)."""
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(F32)


def _seqsum(a: np.ndarray) -> np.ndarray:
    """C's `float s = 0; for (i) s += a[i];` over axis 0 of [n, M]."""
    s = a[0] + F32(0)
    for i in range(1, a.shape[0]):
        s += a[i]
    return s


def _argmax_abs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }` from 0 -> (amax, max)."""
    amax = np.zeros(x.shape[1:], F32)
    vmax = np.zeros(x.shape[1:], F32)
    for i in range(x.shape[0]):
        ax = np.abs(x[i])
        upd = ax > amax
        amax = np.where(upd, ax, amax)
        vmax = np.where(upd, x[i], vmax)
    return amax, vmax


def _running_max(a: np.ndarray) -> np.ndarray:
    """`float m = 0; for (j) if (a[j] > m) m = a[j];` over the last axis."""
    m = np.zeros(a.shape[:-1], F32)
    for j in range(a.shape[-1]):
        m = np.where(a[..., j] > m, a[..., j], m)
    return m


def _to_cols(xb: np.ndarray, n: int) -> np.ndarray:
    """[nb, 256] super-blocks -> element-major [n, nb*256/n] sub-blocks."""
    return np.ascontiguousarray(xb.reshape(-1, n).T)


def _levels(iscale: np.ndarray, x: np.ndarray, mn: np.ndarray, lo_x: np.ndarray, hi_x: np.ndarray,
            nmax: int) -> np.ndarray:
    """float(clamp(nearest_int(iscale*(x - mn)), 0, nmax)) on [n, M].

    Fast path (np.rint) when every product is provably inside nearest_int's exact range: the
    float ops are monotone in x, so the extremes are reached at the per-column min/max of x.
    """
    with np.errstate(all="ignore"):
        ends = np.maximum(np.abs(iscale * (lo_x - mn)), np.abs(iscale * (hi_x - mn)))
        v = iscale * (x - mn)
        if np.all(ends < F32(4194304.0)):
            np.rint(v, out=v)
            return np.clip(v, F32(0), F32(nmax), out=v)
        return np.clip(nearest_int(v), 0, nmax).astype(F32)


def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale+min search of make_qkx2_quants on [n, M] columns -> (scale, the_min, L[n, M] int32)."""
    n = x.shape[0]
    mn = x[0].copy()
    mx = x[0].copy()
    sum_w = w[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        mn = np.where(x[i] < mn, x[i], mn)
        mx = np.where(x[i] > mx, x[i], mx)
        sum_w += w[i]
        sum_x += w[i] * x[i]
    lo_x = mn
    mn = np.where(mn > 0, F32(0), mn)
    flat = mx == mn
    flat_min = -mn
    fnmax = F32(nmax)

    tmp = np.empty((3,) + x.shape, F32)                   # scratch: [w*l, w*l*x, w*l*l]

    def error(scale: np.ndarray, lf: np.ndarray, mn: np.ndarray) -> np.ndarray:
        diff = np.multiply(scale, lf, out=tmp[0])
        diff += mn
        diff -= x
        if use_mad:
            np.abs(diff, out=diff)
        else:
            diff *= diff
        diff *= w
        return _seqsum(diff)

    with np.errstate(all="ignore"):
        iscale = fnmax / (mx - mn)
        scale = F32(1) / iscale
        best = error(scale, _levels(iscale, x, mn, lo_x, mx, nmax), mn)
        # L is rebuilt once at the end from the (iscale, min) pair that produced it
        l_iscale, l_mn = iscale, mn
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + fnmax) / (mx - mn)
            lf = _levels(iscale, x, mn, lo_x, mx, nmax)
            np.multiply(w, lf, out=tmp[0])
            np.multiply(tmp[0], x, out=tmp[1])
            np.multiply(tmp[0], lf, out=tmp[2])
            sum_l, sum_xl, sum_l2 = _seqsum(tmp.swapaxes(0, 1))
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur = error(this_scale, lf, this_min)
            upd = (D > 0) & (cur < best)
            l_iscale = np.where(upd, iscale, l_iscale)
            l_mn = np.where(upd, mn, l_mn)
            best = np.where(upd, cur, best)
            scale = np.where(upd, this_scale, scale)
            mn = np.where(upd, this_min, mn)
        L = np.clip(nearest_int(l_iscale * (x - l_mn)), 0, nmax)
    return np.where(flat, F32(0), scale), np.where(flat, flat_min, -mn), np.where(flat, 0, L)


def make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) on [n, M] -> (scale, L[n, M] int32)."""
    amax, vmax = _argmax_abs(x)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    wx = w * x

    def stats(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lv = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        lf = lv.astype(F32)
        return lv, _seqsum(wx * lf), _seqsum(w * lf * lf)

    with np.errstate(all="ignore"):
        lv, sumlx, suml2 = stats(F32(-nmax) / vmax)
        L = lv + nmax
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            lv, slx, sl2 = stats(-(F32(nmax) + F32(0.1) * F32(step)) / vmax)
            upd = (sl2 > 0) & (slx * slx > best * sl2)
            new_scale = slx / sl2
            L = np.where(upd, lv + nmax, L)
            scale = np.where(upd, new_scale, scale)
            best = np.where(upd, new_scale * slx, best)
    return np.where(zero, F32(0), scale), np.where(zero, 0, L)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) on [n, M] -> (scale, L[n, M] int32)."""
    amax, vmax = _argmax_abs(x)
    zero = amax < GROUP_MAX_EPS
    n = x.shape[0]
    w = x * x
    wx = w * x
    with np.errstate(all="ignore"):
        L = np.clip(nearest_int((F32(-nmax) / vmax) * x), -nmax, nmax - 1)
        lf = L.astype(F32)
        sumlx = _seqsum(wx * lf)
        suml2 = _seqsum(w * lf * lf)
        active = ~zero
        for _ in range(5):
            changed = np.zeros_like(active)
            for i in range(n):
                li = L[i].astype(F32)
                slx = sumlx - wx[i] * li
                sl2 = suml2 - w[i] * li * li
                new_l = np.clip(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
                nf = new_l.astype(F32)
                slx2 = slx + wx[i] * nf
                sl22 = sl2 + w[i] * nf * nf
                ok = (active & (slx > 0) & (new_l != L[i]) & (sl22 > 0)
                      & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[i] = np.where(ok, new_l, L[i])
                sumlx = np.where(ok, slx2, sumlx)
                suml2 = np.where(ok, sl22, suml2)
                changed |= ok
            active &= changed
            if not active.any():
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale), np.where(zero, 0, L + nmax)


def _requant(x: np.ndarray, d: np.ndarray, dm: np.ndarray | None, L: np.ndarray,
             lo: int, hi: int) -> np.ndarray:
    """Final pass: `if (!d) continue; l = nearest_int((x + dm)/d)` clamped; keeps L where d == 0.

    x, L: [nb, nsub, n]; d, dm: [nb, nsub].
    """
    with np.errstate(all="ignore"):
        num = x if dm is None else x + dm[..., None]
        lnew = np.clip(nearest_int(num / d[..., None]), lo, hi)
    return np.where((d == 0)[..., None], L, lnew)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales/mins [nb, 8] (uint8) -> the 12-byte Q4_K/Q5_K scales field."""
    out = np.empty((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out


def _q45_k(xb: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, ...]:
    """Shared body of quantize_row_q4_K_ref / q5_K_ref -> (d, dmin, scales[12], L[nb, 256])."""
    nb = xb.shape[0]
    x = _to_cols(xb, 32)                                   # [32, nb*8]
    sum_x2 = _seqsum(x * x)
    av_x = np.sqrt(sum_x2 / F32(32))
    w = av_x + np.abs(x)
    scales, mins, L = make_qkx2_quants(x, w, nmax, rmin, 0.1, nstep, False)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    L = L.T.reshape(nb, 8, 32)
    max_scale = _running_max(scales)
    max_min = _running_max(mins)
    with np.errstate(all="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
        ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
        lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
        d_bits = fp16_bits(max_scale / F32(63))
        m_bits = fp16_bits(max_min / F32(63))
        d = fp16_value(d_bits)[:, None] * ls.astype(F32)
        dm = fp16_value(m_bits)[:, None] * lm.astype(F32)
    L = _requant(xb.reshape(nb, 8, 32), d, dm, L, 0, nmax).reshape(nb, 256)
    return d_bits, m_bits, _pack_scales_k4(ls, lm), L.astype(np.uint8)


def _q4_k_chunk(xb: np.ndarray) -> np.ndarray:
    d, dmin, sc, L = _q45_k(xb, 15, -1.0, 20)
    q = L.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(-1, 128)
    return np.concatenate([d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), sc, qs], axis=1)


def _q5_k_chunk(xb: np.ndarray) -> np.ndarray:
    d, dmin, sc, L = _q45_k(xb, 31, -0.5, 15)
    q = L.reshape(-1, 4, 2, 32)
    qs = ((q[:, :, 0, :] & 0xF) | ((q[:, :, 1, :] & 0xF) << 4)).reshape(-1, 128)
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
    qh = ((q >> 4) << shifts[None, :, :, None]).sum(axis=(1, 2), dtype=np.uint8)
    return np.concatenate([d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), sc, qh, qs], axis=1)


def _q6_k_chunk(xb: np.ndarray) -> np.ndarray:
    nb = xb.shape[0]
    scales, L = make_qx_quants_rmse1(_to_cols(xb, 16), 32)
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)
    amax, vmax = _argmax_abs(scales.T)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(all="ignore"):
        iscale = F32(-128) / vmax
        d_bits = fp16_bits(F32(1) / iscale)
        sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        d = fp16_value(d_bits)[:, None] * sc.astype(F32)
    L = _requant(xb.reshape(nb, 16, 16), d, None, L - 32, -32, 31) + 32
    A = L.reshape(nb, 2, 4, 32).astype(np.uint8)
    ql = np.stack([A[:, :, 0] & 0xF | (A[:, :, 2] & 0xF) << 4,
                   A[:, :, 1] & 0xF | (A[:, :, 3] & 0xF) << 4], axis=2).reshape(nb, 128)
    qh = (A[:, :, 0] >> 4 | (A[:, :, 1] >> 4) << 2 | (A[:, :, 2] >> 4) << 4
          | (A[:, :, 3] >> 4) << 6).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d_bits[:, None].view(np.uint8)], axis=1)
    out[zero] = 0
    return out


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """[nb, 256] values 0..3 -> 64 bytes: qs[32*h + l] = L[128h+l] | L[128h+l+32]<<2 | ..."""
    A = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (A[:, :, 0] | A[:, :, 1] << 2 | A[:, :, 2] << 4 | A[:, :, 3] << 6).reshape(-1, 64)


def _q3_k_chunk(xb: np.ndarray) -> np.ndarray:
    nb = xb.shape[0]
    scales, L = make_q3_quants(_to_cols(xb, 16), 4)
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)
    amax, max_scale = _argmax_abs(scales.T)
    nz = max_scale != 0
    with np.errstate(all="ignore"):
        iscale = F32(-32) / max_scale
        l8 = (nearest_int(iscale[:, None] * scales) & 0xFF).astype(np.uint8).view(np.int8)
        lq = np.where(nz[:, None], np.clip(l8.astype(np.int32), -32, 31) + 32, 0).astype(np.uint8)
        d_bits = np.where(nz, fp16_bits(F32(1) / iscale), np.uint16(0)).astype(np.uint16)
        d = fp16_value(d_bits)[:, None] * (lq.astype(np.int32) - 32).astype(F32)
    L = _requant(xb.reshape(nb, 16, 16), d, None, L - 4, -4, 3).reshape(nb, 256) + 4
    hi = (L > 3).reshape(nb, 8, 32).astype(np.uint8)
    hmask = (hi << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    sc = np.zeros((nb, 12), np.uint8)
    sc[:, 0:8] = (lq[:, 0:8] & 0xF) | ((lq[:, 8:16] & 0xF) << 4)
    hi2 = (lq >> 4).reshape(nb, 4, 4)                      # [nb, j//4, j%4]
    sc[:, 8:12] = (hi2 << (2 * np.arange(4, dtype=np.uint8))[None, :, None]).sum(axis=1, dtype=np.uint8)
    return np.concatenate([hmask, _pack_2bit(L & 3), sc, d_bits[:, None].view(np.uint8)], axis=1)


def _q2_k_chunk(xb: np.ndarray) -> np.ndarray:
    nb = xb.shape[0]
    x = _to_cols(xb, 16)
    scales, mins, L = make_qkx2_quants(x, np.abs(x), 3, -0.5, 0.1, 15, True)
    scales = scales.reshape(nb, 16)
    mins = mins.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)
    max_scale = _running_max(scales)
    max_min = _running_max(mins)
    with np.errstate(all="ignore"):
        ls = np.where(max_scale[:, None] > 0, nearest_int((F32(15) / max_scale)[:, None] * scales), 0)
        lm = np.where(max_min[:, None] > 0, nearest_int((F32(15) / max_min)[:, None] * mins), 0)
        sc = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)
        d_bits = np.where(max_scale > 0, fp16_bits(max_scale / F32(15)), np.uint16(0)).astype(np.uint16)
        m_bits = np.where(max_min > 0, fp16_bits(max_min / F32(15)), np.uint16(0)).astype(np.uint16)
        d = fp16_value(d_bits)[:, None] * (sc & 0xF).astype(F32)
        dm = fp16_value(m_bits)[:, None] * (sc >> 4).astype(F32)
    L = _requant(xb.reshape(nb, 16, 16), d, dm, L, 0, 3).reshape(nb, 256)
    return np.concatenate([sc, _pack_2bit(L), d_bits[:, None].view(np.uint8),
                           m_bits[:, None].view(np.uint8)], axis=1)


_KERNELS = {"Q2_K": (_q2_k_chunk, 84), "Q3_K": (_q3_k_chunk, 110), "Q4_K": (_q4_k_chunk, 144),
            "Q5_K": (_q5_k_chunk, 176), "Q6_K": (_q6_k_chunk, 210)}


def quantize_k(rows: np.ndarray, name: str) -> np.ndarray:
    """Quantize float32 rows [nrows, n] (n % 256 == 0) to K-quant `name` -> uint8 [nrows, bytes]."""
    kernel, bsize = _KERNELS[name]
    nrows, n = rows.shape
    xb = np.ascontiguousarray(rows, dtype=F32).reshape(-1, QK_K)
    out = np.empty((xb.shape[0], bsize), np.uint8)
    for s in range(0, xb.shape[0], _CHUNK):
        out[s:s + _CHUNK] = kernel(xb[s:s + _CHUNK])
    return out.reshape(nrows, n // QK_K * bsize)
