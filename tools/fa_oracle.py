"""ctypes driver of the installed ggml's ggml_flash_attn_ext (recording tool; imports llama_cpp).

One-op graph laid out as llama.cpp's build_attn_mha builds it: Q [D, n_head, n_tok] F32 permuted
(0, 2, 1, 3), K/V cache views [D, n_head_kv, n_kv] F16 permuted likewise (V not transposed), mask
F16 [n_kv, n_tok] (no row padding in this llama.cpp), prec F32, computed by
ggml_graph_compute_with_ctx with an explicit thread count. Output [D, n_head, n_tok] F32, returned
as [n_tok, n_head * D] (llama.cpp's following reshape_2d).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import llama_cpp

_LIB = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1
GGML_PREC_F32 = 10

_base = ctypes.CDLL(os.path.join(_LIB, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
_cpu = ctypes.CDLL(os.path.join(_LIB, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


_P, _I64, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_base.ggml_init.argtypes, _base.ggml_init.restype = [_InitParams], _P
_base.ggml_free.argtypes = [_P]
_base.ggml_new_tensor_2d.argtypes, _base.ggml_new_tensor_2d.restype = [_P, _I, _I64, _I64], _P
_base.ggml_new_tensor_3d.argtypes, _base.ggml_new_tensor_3d.restype = [_P, _I, _I64, _I64, _I64], _P
_base.ggml_permute.argtypes, _base.ggml_permute.restype = [_P, _P, _I, _I, _I, _I], _P
_base.ggml_flash_attn_ext.argtypes = [_P, _P, _P, _P, _P, ctypes.c_float, ctypes.c_float, ctypes.c_float]
_base.ggml_flash_attn_ext.restype = _P
_base.ggml_prec_set_acc.argtypes, _base.ggml_prec_set_acc.restype = [_P, _I], ctypes.c_bool
_base.ggml_get_data.argtypes, _base.ggml_get_data.restype = [_P], _P
_base.ggml_nbytes.argtypes, _base.ggml_nbytes.restype = [_P], ctypes.c_size_t
_base.ggml_new_graph.argtypes, _base.ggml_new_graph.restype = [_P], _P
_base.ggml_build_forward_expand.argtypes = [_P, _P]
_cpu.ggml_graph_compute_with_ctx.argtypes, _cpu.ggml_graph_compute_with_ctx.restype = [_P, _P, _I], _I
_cpu.ggml_cpu_init.argtypes = []
_cpu.ggml_cpu_init()


def _fill(t: int, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    assert _base.ggml_nbytes(t) == arr.nbytes
    ctypes.memmove(_base.ggml_get_data(t), arr.ctypes.data, arr.nbytes)


def flash_attn_ext(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, scale: float,
                   n_threads: int = 1, softcap: float = 0.0) -> np.ndarray:
    """q f32 [n_tok, n_head, D]; k, v uint16 half bits [n_kv, n_head_kv, D]; mask f32 or half bits
    [n_tok, n_kv] -> f32 [n_tok, n_head * D] computed by the installed ggml."""
    n_tok, n_head, d = q.shape
    n_kv, n_head_kv, dv = v.shape
    mem = 64 * 1024 * 1024 + 4 * (q.nbytes + k.nbytes + v.nbytes + n_tok * n_head * dv * 4 + n_tok * n_kv * 2)
    ctx = _base.ggml_init(_InitParams(mem, None, False))
    try:
        tq = _base.ggml_new_tensor_3d(ctx, GGML_TYPE_F32, d, n_head, n_tok)
        tk = _base.ggml_new_tensor_3d(ctx, GGML_TYPE_F16, d, n_head_kv, n_kv)
        tv = _base.ggml_new_tensor_3d(ctx, GGML_TYPE_F16, dv, n_head_kv, n_kv)
        _fill(tq, q.astype(np.float32))
        _fill(tk, k.view(np.uint16))
        _fill(tv, v.view(np.uint16))
        tm = None
        if mask is not None:
            tm = _base.ggml_new_tensor_2d(ctx, GGML_TYPE_F16, n_kv, n_tok)
            m = mask if mask.dtype == np.uint16 else mask.astype(np.float16).view(np.uint16)
            _fill(tm, m)
        pq = _base.ggml_permute(ctx, tq, 0, 2, 1, 3)
        pk = _base.ggml_permute(ctx, tk, 0, 2, 1, 3)
        pv = _base.ggml_permute(ctx, tv, 0, 2, 1, 3)
        out = _base.ggml_flash_attn_ext(ctx, pq, pk, pv, tm, scale, 0.0, softcap)
        _base.ggml_prec_set_acc(out, GGML_PREC_F32)
        gf = _base.ggml_new_graph(ctx)
        _base.ggml_build_forward_expand(gf, out)
        rc = _cpu.ggml_graph_compute_with_ctx(ctx, gf, n_threads)
        assert rc == 0, rc
        res = np.empty((n_tok, n_head * dv), np.float32)
        ctypes.memmove(res.ctypes.data, _base.ggml_get_data(out), res.nbytes)
        return res
    finally:
        _base.ggml_free(ctx)
