"""llama.cpp's CPU flash attention (ggml_flash_attn_ext with an F16 KV cache), bit-exact.

ggml_compute_forward_flash_attn_ext_f16 (ops.cpp) picks one of three kernels:
  n_tok == 1 and n_kv >= 512   split-KV decode: the KV range cut in n_threads chunks whose partial
                               (M, S, VKQ) are merged; the only case where the thread count
                               changes bits (fa_chunk.split_decode)
  n_tok >= 64                  tiled: F32 Q, 64 x 64 tiles, ggml_v_expf softmax (fa_tiled)
  otherwise                    one_chunk: half Q, online softmax with libm expf, half V
                               accumulator (fa_chunk.one_chunk)
The node's output is [DV, n_head, n_tok] (permuted), which llama.cpp reshapes to
[n_head * DV, n_tok]: here float32 [n_tok, n_head * DV].
"""

from __future__ import annotations

import numpy as np

from qdbg.errors import QdbgError
from qdbg.numerics.kernels.fa_chunk import one_chunk, split_decode
from qdbg.numerics.kernels.fa_tiled import TQ, q_tiles, tiled

SPLIT_KV_MIN = 512  # nek1 >= 512 takes the split-KV decode path


def kernel_for(n_tok: int, n_kv: int, n_threads: int = 1) -> str:
    """Name of the kernel ops.cpp runs: "split", "tiled" or "one_chunk"."""
    if n_tok == 1 and n_kv >= SPLIT_KV_MIN:
        return "split"
    if n_tok >= TQ:
        return "tiled"
    return "one_chunk"


def _mask_f32(mask: np.ndarray, n_tok: int, n_kv: int) -> np.ndarray:
    """The F16 mask tensor's values as float32 [n_tok, n_kv] (rows past n_tok are never read)."""
    if mask.dtype == np.uint16:
        m = mask.view(np.float16)
    else:
        m = np.asarray(mask, np.float32).astype(np.float16)
    if m.ndim != 2 or m.shape[0] < n_tok or m.shape[1] != n_kv:
        raise QdbgError(f"flash_attn_ext: mask shape {mask.shape}, expected [{n_tok}, {n_kv}]")
    return np.ascontiguousarray(m[:n_tok].astype(np.float32))


def flash_attn_ext(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float,
                   n_threads: int = 1, softcap: float = 0.0) -> np.ndarray:
    """llama.cpp's flash-attention node followed by its reshape_2d.

    q float32 [n_tok, n_head, DK]; k, v uint16 half bits [n_kv, n_head_kv, D] (the padded KV view,
    padding cells zero, V not transposed); mask [n_tok, n_kv] float32 (0 / -inf) or half bits;
    scale and softcap (logit_softcap, 0 for none) as passed to ggml_flash_attn_ext.
    Returns float32 [n_tok, n_head * DV].
    """
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3 or k.shape[:2] != v.shape[:2] or k.shape[2] != q.shape[2]:
        raise QdbgError(f"flash_attn_ext: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit")
    n_tok, n_head, _ = q.shape
    n_kv, n_head_kv, dv = v.shape
    if n_head % n_head_kv:
        raise QdbgError(f"flash_attn_ext: {n_head} query heads over {n_head_kv} KV heads")
    if n_threads < 1:
        raise QdbgError(f"flash_attn_ext: n_threads {n_threads}")
    if n_tok == 0:
        return np.empty((0, n_head * dv), np.float32)
    qf = np.ascontiguousarray(q, np.float32)
    kb = np.ascontiguousarray(k).view(np.uint16)
    vb = np.ascontiguousarray(v).view(np.uint16)
    m = _mask_f32(mask, n_tok, n_kv)
    out = np.empty((n_tok, n_head, dv), np.float32)
    cap = np.float32(softcap)
    s = np.float32(scale) / cap if cap != 0 else np.float32(scale)  # ops.cpp: scale /= logit_softcap
    kind = kernel_for(n_tok, n_kv, n_threads)
    if kind == "split":
        split_decode(qf, kb, vb, m, s, cap, int(n_threads), out)
    elif kind == "tiled":
        tiled(qf, kb, vb, m, s, cap, q_tiles(n_tok, n_head, int(n_threads)), out)
    else:
        one_chunk(qf, kb, vb, m, s, cap, out)
    return out.reshape(n_tok, n_head * dv)  # [n_tok, n_head, DV] -> [n_tok, n_head*DV]
