"""One pure NumPy function per sub-op, arrays in and arrays out.

Every function computes what ggml's CPU backend computes for the same op, in float32 with the same
order of operations where it matters (sums that ggml accumulates in double are accumulated in
float64 here). Matrix products live in matmul.py because their numerics depend on the mode.
Layouts use numpy order: activations are [n_tok, n_embd], heads are [n_tok, n_head, head_dim],
attention scores are [n_head, n_tok, n_kv].
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def f32(x: float) -> np.float32:
    """A Python float as the C float llama.cpp would hold (e.g. sqrtf(n_embd))."""
    return np.float32(x)


def to_f16(x: np.ndarray) -> np.ndarray:
    """Round to IEEE half (round-to-nearest-even, as F16C's vcvtps2ph) and back to float32."""
    return x.astype(np.float16).astype(F32)


def get_rows(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """inp_embd: rows of the (dequantized) embedding table. [n_vocab, n_embd] -> [n_tok, n_embd]"""
    return np.ascontiguousarray(table[ids], dtype=F32)  # exact from a float64 copy too


def scale(x: np.ndarray, s: np.float32) -> np.ndarray:
    """ggml_scale: x * s in float32."""
    return (x * F32(s)).astype(F32, copy=False)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """ggml_rms_norm followed by ggml_mul with the norm weight, over the last axis.

    ggml: double sum = Σ (double)(x*x); float mean = sum/n; float scale = 1.0f/sqrtf(mean + eps);
    y = x*scale, then y*w. `mean` is a float before eps is added: doing that sum in double moves
    the scale by an ulp, and an ulp is enough to flip 8-bit activation codes downstream.
    """
    sq = (x * x).astype(np.float64)
    mean = (sq.sum(axis=-1, keepdims=True) / x.shape[-1]).astype(F32)
    s = F32(1.0) / np.sqrt(mean + F32(eps))
    return ((x * s) * weight).astype(F32, copy=False)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ggml_add (residual connections and biases), float32."""
    return (a + b).astype(F32, copy=False)


def rope_cache(positions: np.ndarray, n_rot: int, base: float, freq_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of every (position, pair) the way ggml_rope_cache_init builds them.

    theta_scale = powf(base, -2/n_rot); theta starts at the position and is multiplied by
    theta_scale once per pair in float32 (a running product, not pos * base^(-2i/n)); the angle is
    freq_scale * theta; cos/sin are correctly rounded float32. Returns two [n_tok, n_rot/2] arrays.
    """
    theta_scale = F32(np.power(np.float64(F32(base)), np.float64(F32(-2.0) / F32(n_rot))))
    theta = positions.astype(F32)
    out = np.empty((positions.shape[0], n_rot // 2), dtype=F32)
    for i in range(n_rot // 2):
        out[:, i] = theta
        theta = (theta * theta_scale).astype(F32)
    ang = (out * F32(freq_scale)).astype(F32).astype(np.float64)
    return np.cos(ang).astype(F32), np.sin(ang).astype(F32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_rot: int, neox: bool) -> np.ndarray:
    """ggml_rope_ext with ext_factor 0 (no YaRN). x: [n_tok, n_head, head_dim]; dims >= n_rot pass.

    norm mode rotates (x[2i], x[2i+1]); neox mode rotates (x[i], x[i + n_rot/2]).
    """
    y = x.copy()
    c = cos[:, None, :]  # [n_tok, 1, n_rot/2]
    s = sin[:, None, :]
    if neox:
        h = n_rot // 2
        x0, x1 = x[..., :h], x[..., h:n_rot]
        y[..., :h] = x0 * c - x1 * s
        y[..., h:n_rot] = x0 * s + x1 * c
    else:
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        y[..., 0:n_rot:2] = x0 * c - x1 * s
        y[..., 1:n_rot:2] = x0 * s + x1 * c
    return y


def causal_mask(q_pos: np.ndarray, kv_pos: np.ndarray, n_swa: int = 0) -> np.ndarray:
    """The KQ mask llama.cpp fills: 0 where query at q_pos may attend kv_pos, -inf elsewhere.

    Causal (kv_pos <= q_pos) and, for sliding-window layers, q_pos - kv_pos < n_swa. [n_tok, n_kv]
    """
    qp = q_pos[:, None]
    kp = kv_pos[None, :]
    ok = kp <= qp
    if n_swa > 0:
        ok &= (qp - kp) < n_swa
    return np.where(ok, F32(0.0), F32(-np.inf)).astype(F32)


def softmax_ext(kq: np.ndarray, mask: np.ndarray, kq_scale: float) -> np.ndarray:
    """ggml_soft_max_ext(kq, mask, scale, max_bias=0) over the last axis.

    w = kq*scale + mask (float32); m = max(w); e = expf(w - m); sum in double; p = e * (float)(1/sum)
    kq: [n_head, n_tok, n_kv], mask: [n_tok, n_kv]
    """
    w = (kq * F32(kq_scale) + mask).astype(F32)
    m = w.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = np.exp((w - m).astype(F32))
    s = e.astype(np.float64).sum(axis=-1, keepdims=True)
    inv = (1.0 / s).astype(F32)
    return (e * inv).astype(F32, copy=False)


def silu(x: np.ndarray) -> np.ndarray:
    """ggml_silu_f32: x / (1 + expf(-x))."""
    with np.errstate(over="ignore"):
        return (x / (F32(1.0) + np.exp(-x))).astype(F32, copy=False)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_swiglu_split: silu(gate) * up."""
    return (silu(gate) * up).astype(F32, copy=False)


_GELU_TABLE: np.ndarray | None = None


def _gelu_f32(x: np.ndarray) -> np.ndarray:
    """ggml_gelu_f32: 0.5x(1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))) in float32."""
    a = F32(0.044715)
    k = F32(0.79788456080286535587989211986876)
    inner = (k * x * (F32(1.0) + a * x * x)).astype(F32)
    return (F32(0.5) * x * (F32(1.0) + np.tanh(inner.astype(np.float64)).astype(F32))).astype(F32)


def gelu_table() -> np.ndarray:
    """ggml_table_gelu_f16: GELU of every half value, stored as half (GGML_GELU_FP16 is on)."""
    global _GELU_TABLE
    if _GELU_TABLE is None:
        h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(F32)
        with np.errstate(all="ignore"):
            _GELU_TABLE = to_f16(_gelu_f32(h))
    return _GELU_TABLE


def geglu(gate: np.ndarray, up: np.ndarray, exact_f32: bool = False) -> np.ndarray:
    """ggml_geglu_split: gelu(gate) * up, with ggml's CPU semantics unless exact_f32.

    ggml rounds gate to half, looks GELU up in a half table (x <= -10 -> 0, x >= 10 -> x).
    """
    if exact_f32:
        return (_gelu_f32(gate) * up).astype(F32)
    idx = gate.astype(np.float16).view(np.uint16)
    g = gelu_table()[idx]
    g = np.where(gate <= F32(-10.0), F32(0.0), np.where(gate >= F32(10.0), gate, g))
    return (g * up).astype(F32, copy=False)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """Final-logit soft-capping: cap * tanh(x / cap), each step in float32."""
    y = (x * (F32(1.0) / F32(cap))).astype(F32)
    return (np.tanh(y) * F32(cap)).astype(F32)
