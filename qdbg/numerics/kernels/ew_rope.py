"""Exact RoPE of ggml's CPU backend: ggml_compute_forward_rope_flt<float> (ops.cpp), ext_factor 0.

Cache (ggml_rope_cache_init + rope_yarn): theta_scale = powf(freq_base, -2.0f/n_dims);
theta = (float)pos, multiplied by theta_scale once per pair in float32; angle =
freq_scale * (theta / ff); cos, sin = sincosf(angle) (glibc; same bits as cosf/sinf);
attn_factor 1 and sin_sign 1 multiply exactly.

Rotation, as GCC compiled rotate_pairs (disassembly of libggml-cpu.so):
      y0 = fma(c, x0, -(s*x1))        y1 = fma(s, x0, c*x1)
  for NEOX (scalar loop, pair (x[i], x[i + n_dims/2])) and NORMAL (pair (x[2i], x[2i+1]),
  vectorized: vfmaddsub over 4 and then 2 pairs), except, in NORMAL mode, the last pair when
  n_dims/2 is odd (the vaddsubps epilogue, no FMA):
      y0 = c*x0 - x1*s                y1 = c*x1 + x0*s
  (a scalar no-FMA loop also runs when dst overlaps src by 4..28 bytes, never the case for a
  separate or exactly in-place output.)
Dimensions from n_dims to head_dim are copied.
"""

from __future__ import annotations

import numpy as np

from qdbg.errors import QdbgError
from qdbg.numerics.kernels.nb import fma32, jit
from qdbg.numerics.kernels.simd_math import cosf, powf, sinf

F32 = np.float32


@jit
def _cache(pos, n_pairs, freq_base, freq_scale, ff, cos, sin):
    theta_scale = powf(freq_base, np.float32(-2.0) / np.float32(2 * n_pairs))
    for t in range(pos.shape[0]):
        theta = np.float32(pos[t])
        for i in range(n_pairs):
            a = freq_scale * (theta / ff[i])
            cos[t, i] = cosf(a)
            sin[t, i] = sinf(a)
            theta = theta * theta_scale


def rope_cache(positions: np.ndarray, n_dims: int, freq_base: float, freq_scale: float = 1.0,
               freq_factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [n_tok, n_dims/2] for ggml_rope_ext with ext_factor 0, attn_factor 1.

    freq_factors: the optional rope_freqs tensor (src2), one divisor per pair.
    """
    if n_dims <= 0 or n_dims % 2:
        raise QdbgError(f"rope_cache: n_dims must be even and positive, got {n_dims}")
    n_pairs = n_dims // 2
    ff = np.ones(n_pairs, F32) if freq_factors is None else np.ascontiguousarray(
        np.asarray(freq_factors, F32).reshape(-1)[:n_pairs])
    pos = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
    cos = np.empty((pos.shape[0], n_pairs), F32)
    sin = np.empty_like(cos)
    _cache(pos, n_pairs, F32(freq_base), F32(freq_scale), ff, cos, sin)
    return cos, sin


@jit
def _rope(x, cos, sin, n_pairs, neox, out):
    n_tok, n_head, hd = x.shape
    odd_tail = (n_pairs & 1) == 1
    for t in range(n_tok):
        for h in range(n_head):
            for d in range(2 * n_pairs, hd):
                out[t, h, d] = x[t, h, d]
            if neox:
                for i in range(n_pairs):
                    c, s = cos[t, i], sin[t, i]
                    x0, x1 = x[t, h, i], x[t, h, i + n_pairs]
                    out[t, h, i] = fma32(c, x0, -(s * x1))
                    out[t, h, i + n_pairs] = fma32(s, x0, c * x1)
            else:
                n_fma = n_pairs - 1 if odd_tail else n_pairs
                for i in range(n_fma):
                    c, s = cos[t, i], sin[t, i]
                    x0, x1 = x[t, h, 2 * i], x[t, h, 2 * i + 1]
                    out[t, h, 2 * i] = fma32(c, x0, -(s * x1))
                    out[t, h, 2 * i + 1] = fma32(s, x0, c * x1)
                if odd_tail:
                    i = n_pairs - 1
                    c, s = cos[t, i], sin[t, i]
                    x0, x1 = x[t, h, 2 * i], x[t, h, 2 * i + 1]
                    out[t, h, 2 * i] = c * x0 - x1 * s
                    out[t, h, 2 * i + 1] = c * x1 + x0 * s


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_dims: int, neox: bool) -> np.ndarray:
    """ggml_rope_ext (mode 0 normal or 2 NEOX, n_offs 0) on x [n_tok, n_head, head_dim], bit-exact.

    cos, sin: rope_cache tables [n_tok, >= n_dims/2]; dims >= n_dims pass through.
    """
    a = np.ascontiguousarray(x, dtype=F32)
    if a.ndim != 3 or n_dims % 2 or not 0 < n_dims <= a.shape[2]:
        raise QdbgError(f"rope: x must be [n_tok, n_head, head_dim >= n_dims], got {a.shape}, "
                        f"n_dims {n_dims}")
    n_pairs = n_dims // 2
    c = np.ascontiguousarray(cos, dtype=F32)
    s = np.ascontiguousarray(sin, dtype=F32)
    if c.shape[0] != a.shape[0] or c.shape[1] < n_pairs or s.shape != c.shape:
        raise QdbgError(f"rope: cos/sin {c.shape}/{s.shape} do not fit x {a.shape}")
    out = np.empty_like(a)
    _rope(a, c, s, n_pairs, bool(neox), out)
    return out
