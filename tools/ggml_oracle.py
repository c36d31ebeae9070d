"""Kernel-level oracle: one ggml op computed by the installed wheel's CPU backend, numpy in and out.

Recording tool only (loads llama_cpp's shared libraries through ctypes; never imported by qdbg or
its tests). Each call builds a one-op ggml graph in a fresh context, allocates it in the CPU buffer
type (weights optionally in CPU_REPACK, as llama.cpp places them), and runs it with
ggml_backend_graph_compute on a CPU backend with an explicit thread count -- the same kernels,
dispatch and threading (OpenMP) that llama.cpp's scheduler uses for a model's graph.

Layouts: a tensor with ggml ne [ne0, ne1, ne2, ne3] is a C-contiguous numpy array of shape
[ne3, ne2, ne1, ne0] (trailing size-1 dims may be dropped). Element types: F32 float32, F16 float32
or float16 (or raw bits as uint16), BF16 raw bits as uint16, quantized types raw GGUF bytes uint8
[n_rows, row_bytes] (raw uint8 bytes are accepted for F32/F16/BF16 too), I32 int32.

Covered ops (what llama.cpp's graphs of llama/qwen2/qwen3/gemma3 compute):
    mul_mat        weight x activations, plain (CPU buffer: vec_dot / llamafile sgemm) or CPU_REPACK
    mul_mat_nd     general MUL_MAT with explicit views/permutes of either operand
    attn_kq / attn_kqv   kq = K x Q and kqv = V x softmax with llama.cpp's exact KV-cache views
    soft_max_ext   softmax(x*scale + mask) (mask F32 without flash attention, F16 with it)
    flash_attn_ext fused attention over llama.cpp's KV-cache views (F16 K/V, F16 mask)
    rope_ext, rms_norm, glu (swiglu/geglu split), scale, add, mul, get_rows, unary (silu, gelu...)
    system_info    llama_print_system_info, ggml version/commit, llama_cpp.__version__

Verified bit for bit against nodes llama.cpp computed inside whole models (tools/check_ggml_oracle.py
over the 20 fidelity goldens: every weight matmul plain and CPU_REPACK, kq, kqv, soft_max, rope,
rms_norm, swiglu, geglu; flash_attn_ext against `record_exact_golden.py --full` output of qwen3 F16:
one_chunk (12-token prompt, decodes), tiled (80 and 300-token prompts) and split-KV (decode over 512
cells, 1 and 2 threads)). Facts seen: CPU_REPACK and plain Q4_K matmuls differ in the last bits;
matmul results do not depend on the thread count; the split-KV flash attention decode does.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Sequence

import numpy as np
import llama_cpp as L
from gguf import GGMLQuantizationType

_LIBDIR = os.path.join(os.path.dirname(L.__file__), "lib")
_base = ctypes.CDLL(os.path.join(_LIBDIR, "libggml-base.so"))
_cpu = ctypes.CDLL(os.path.join(_LIBDIR, "libggml-cpu.so"))

_P, _I64, _F, _I, _SZ = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_size_t


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]


def _sig(lib: ctypes.CDLL, name: str, res: Any, *args: Any) -> None:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = res, list(args)


for _n, _r, _a in [
    ("ggml_init", _P, [_InitParams]), ("ggml_free", None, [_P]),
    ("ggml_tensor_overhead", _SZ, []), ("ggml_graph_overhead", _SZ, []),
    ("ggml_new_tensor", _P, [_P, _I, _I, ctypes.POINTER(_I64)]),
    ("ggml_view_4d", _P, [_P, _P, _I64, _I64, _I64, _I64, _SZ, _SZ, _SZ, _SZ]),
    ("ggml_permute", _P, [_P, _P, _I, _I, _I, _I]),
    ("ggml_transpose", _P, [_P, _P]),
    ("ggml_mul_mat", _P, [_P, _P, _P]),
    ("ggml_prec_set_acc", ctypes.c_bool, [_P, _I]),
    ("ggml_soft_max_ext", _P, [_P, _P, _P, _F, _F]),
    ("ggml_rope_ext", _P, [_P, _P, _P, _P, _I, _I, _I, _F, _F, _F, _F, _F, _F]),
    ("ggml_rms_norm", _P, [_P, _P, _F]),
    ("ggml_swiglu_split", _P, [_P, _P, _P]), ("ggml_geglu_split", _P, [_P, _P, _P]),
    ("ggml_flash_attn_ext", _P, [_P, _P, _P, _P, _P, _F, _F, _F]),
    ("ggml_flash_attn_ext_set_n_kv_max", None, [_P, ctypes.c_int32]),
    ("ggml_scale", _P, [_P, _P, _F]), ("ggml_add", _P, [_P, _P, _P]),
    ("ggml_mul", _P, [_P, _P, _P]), ("ggml_get_rows", _P, [_P, _P, _P]),
    ("ggml_unary", _P, [_P, _P, _I]), ("ggml_cont", _P, [_P, _P]),
    ("ggml_new_graph", _P, [_P]), ("ggml_build_forward_expand", None, [_P, _P]),
    ("ggml_nbytes", _SZ, [_P]), ("ggml_is_contiguous", ctypes.c_bool, [_P]),
    ("ggml_row_size", _SZ, [_I, _I64]), ("ggml_type_size", _SZ, [_I]),
    ("ggml_backend_alloc_ctx_tensors_from_buft", _P, [_P, _P]),
    ("ggml_backend_tensor_set", None, [_P, _P, _SZ, _SZ]),
    ("ggml_backend_tensor_get", None, [_P, _P, _SZ, _SZ]),
    ("ggml_backend_buffer_free", None, [_P]), ("ggml_backend_buffer_name", ctypes.c_char_p, [_P]),
    ("ggml_backend_graph_compute", _I, [_P, _P]), ("ggml_backend_free", None, [_P]),
    ("ggml_version", ctypes.c_char_p, []), ("ggml_commit", ctypes.c_char_p, []),
]:
    _sig(_base if hasattr(_base, _n) else _cpu, _n, _r, *_a)
for _n, _r, _a in [("ggml_backend_cpu_init", _P, []),
                   ("ggml_backend_cpu_set_n_threads", None, [_P, _I]),
                   ("ggml_backend_cpu_buffer_type", _P, []),
                   ("_Z35ggml_backend_cpu_repack_buffer_typev", _P, [])]:
    _sig(_cpu, _n, _r, *_a)

_LOG_CB = L.llama_log_callback(lambda level, text, ud: None)
L.llama_log_set(_LOG_CB, ctypes.c_void_p())  # silence "repack: repack tensor ..." debug lines

_UNARY = {"abs": 0, "sgn": 1, "neg": 2, "step": 3, "tanh": 4, "elu": 5, "relu": 6, "sigmoid": 7,
          "gelu": 8, "gelu_quick": 9, "silu": 10, "hardswish": 11, "hardsigmoid": 12, "exp": 13,
          "gelu_erf": 14}
PREC_F32 = 10
I32 = 26
# byte offsets inside struct ggml_tensor (checked against ggml_nbytes in _Graph.tensor)
_OFF_TYPE, _OFF_BUFFER, _OFF_NE, _OFF_NB = 0, 8, 16, 48
_OFF_EXTRA = 8 + 8 + 32 + 32 + 4 + 64 + 4 + 80 + 8 + 8 + 8 + 64  # type..name -> extra


def type_id(t: str | int | GGMLQuantizationType) -> int:
    """ggml type id of a name ('Q4_K', 'f16'), gguf enum member, or id."""
    if isinstance(t, str):
        return int(GGMLQuantizationType[t.upper()].value) if t.upper() != "I32" else I32
    return int(t)


def _ne(p: int) -> list[int]:
    return list((ctypes.c_int64 * 4).from_address(p + _OFF_NE))


def _nb(p: int) -> list[int]:
    return list((ctypes.c_size_t * 4).from_address(p + _OFF_NB))


def _as_bytes(arr: np.ndarray, t: int) -> np.ndarray:
    """The raw element bytes of `arr` as ggml type t (C order)."""
    a = np.asarray(arr)
    if a.dtype == np.uint8:  # raw bytes of any type, as GGUF stores them
        return np.ascontiguousarray(a).reshape(-1)
    if t == 0:
        a = a.astype(np.float32)
    elif t == 1:
        a = a if a.dtype == np.uint16 else a.astype(np.float16)
    elif t == 30:  # BF16: raw bits only (rounding is the caller's business)
        if a.dtype != np.uint16:
            raise TypeError("BF16 data must be given as raw uint16 bits")
    elif t == I32:
        a = a.astype(np.int32)
    elif a.dtype != np.uint8:
        raise TypeError(f"quantized type {t} needs raw uint8 bytes, got {a.dtype}")
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1)


def _ne_of(arr: np.ndarray, t: int, ne0: int | None = None) -> list[int]:
    """ggml ne of a numpy array (reversed shape); quantized rows need ne0 (elements per row)."""
    shape = list(np.shape(arr))[::-1] or [1]
    if np.asarray(arr).dtype == np.uint8 and t in (0, 1, 30):
        shape[0] //= {0: 4, 1: 2, 30: 2}[t]
    if ne0 is not None:
        shape[0] = ne0
    return (shape + [1, 1, 1])[:4]


class _Graph:
    """One ggml context + graph; inputs are copied in after allocation, output read back."""

    def __init__(self, n_threads: int = 1) -> None:
        self.n_threads = n_threads
        size = _base.ggml_tensor_overhead() * 256 + _base.ggml_graph_overhead() + 4096
        self.ctx = _base.ggml_init(_InitParams(size, None, True))
        self.inputs: list[tuple[int, np.ndarray]] = []
        self.weights: list[tuple[int, int]] = []  # (ctx, buffer) of separately placed weights
        self.buffer = None
        self.backend = None

    def __enter__(self) -> "_Graph":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.buffer:
            _base.ggml_backend_buffer_free(self.buffer)
        for ctx, buf in self.weights:
            _base.ggml_backend_buffer_free(buf)
            _base.ggml_free(ctx)
        if self.backend:
            _base.ggml_backend_free(self.backend)
        _base.ggml_free(self.ctx)

    def tensor(self, arr: np.ndarray, t: str | int, ne: Sequence[int] | None = None,
               ne0: int | None = None) -> int:
        """A new input tensor holding `arr` (ne from its shape unless given)."""
        tid = type_id(t)
        ne = list(ne) if ne is not None else _ne_of(arr, tid, ne0)
        ne = (ne + [1, 1, 1])[:4]
        p = _base.ggml_new_tensor(self.ctx, tid, 4, (_I64 * 4)(*ne))
        data = _as_bytes(arr, tid)
        if data.size != _base.ggml_nbytes(p):
            raise ValueError(f"data of {data.size} bytes for a {ne} tensor of type {tid} "
                             f"({_base.ggml_nbytes(p)} bytes)")
        self.inputs.append((p, data))
        return p

    def weight(self, raw: np.ndarray, t: str | int, ne: Sequence[int], repack: bool) -> int:
        """A weight tensor; with repack it lives in CPU_REPACK (asserted to be repacked)."""
        if not repack:
            return self.tensor(raw, t, ne)
        tid = type_id(t)
        if _as_bytes(raw, tid).size != _base.ggml_row_size(tid, ne[0]) * int(np.prod(ne[1:])):
            raise ValueError(f"weight data of {np.asarray(raw).nbytes} bytes does not fit ne {list(ne)}")
        ctx = _base.ggml_init(_InitParams(_base.ggml_tensor_overhead() * 4, None, True))
        p = _base.ggml_new_tensor(ctx, tid, 4, (_I64 * 4)(*(list(ne) + [1, 1, 1])[:4]))
        buft = _cpu._Z35ggml_backend_cpu_repack_buffer_typev()
        buf = _base.ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft)
        self.weights.append((ctx, buf))
        if not buf or _base.ggml_backend_buffer_name(buf) != b"CPU_REPACK":
            raise RuntimeError("could not allocate a CPU_REPACK buffer")
        if not ctypes.c_void_p.from_address(p + _OFF_EXTRA).value:
            raise ValueError(f"type {tid} with ne {list(ne)} is not repacked by this build")
        data = _as_bytes(raw, tid)
        if data.size != _base.ggml_nbytes(p):
            raise ValueError(f"weight data of {data.size} bytes for ne {list(ne)} of type {tid} "
                             f"({_base.ggml_nbytes(p)} bytes)")
        _base.ggml_backend_tensor_set(p, data.ctypes.data, 0, data.size)
        return p

    def compute(self, out: int) -> np.ndarray:
        """Allocate, fill inputs, run the graph ending in `out`, return out as numpy (ne reversed)."""
        gf = _base.ggml_new_graph(self.ctx)
        _base.ggml_build_forward_expand(gf, out)
        self.buffer = _base.ggml_backend_alloc_ctx_tensors_from_buft(
            self.ctx, _cpu.ggml_backend_cpu_buffer_type())
        for p, data in self.inputs:
            _base.ggml_backend_tensor_set(p, data.ctypes.data, 0, data.size)
        self.backend = _cpu.ggml_backend_cpu_init()
        _cpu.ggml_backend_cpu_set_n_threads(self.backend, self.n_threads)
        rc = _base.ggml_backend_graph_compute(self.backend, gf)
        if rc != 0:
            raise RuntimeError(f"ggml_backend_graph_compute returned {rc}")
        t = ctypes.c_int.from_address(out + _OFF_TYPE).value
        dt = {0: np.float32, 1: np.float16, I32: np.int32}[t]
        if not _base.ggml_is_contiguous(out):
            raise RuntimeError("output tensor is not contiguous")
        res = np.empty(_ne(out)[::-1], dtype=dt)
        _base.ggml_backend_tensor_get(out, res.ctypes.data, 0, res.nbytes)
        return res

    def view(self, p: int, ne: Sequence[int], nb: Sequence[int], offset: int = 0) -> int:
        """ggml_view_4d of p: ne (4), nb[1..3] in bytes, byte offset."""
        ne = (list(ne) + [1, 1, 1])[:4]
        nb = list(nb)
        return _base.ggml_view_4d(self.ctx, p, *ne, nb[0], nb[1], nb[2], offset)

    def permute(self, p: int, axes: Sequence[int]) -> int:
        return _base.ggml_permute(self.ctx, p, *axes)


def _squeeze(res: np.ndarray, ndim: int) -> np.ndarray:
    return res.reshape(res.shape[4 - ndim:]) if ndim < 4 else res


def mul_mat(w_raw: np.ndarray, wtype: str | int | GGMLQuantizationType, n_in: int, x: np.ndarray,
            repack: bool = False, n_threads: int = 1) -> np.ndarray:
    """y = x @ W.T as llama.cpp's MUL_MAT(weight, x): w_raw [n_out, row_bytes] (uint8 for block
    types, float32 for F32, uint16 bits or float for F16/BF16), x float32 [n_tok, n_in] ->
    float32 [n_tok, n_out]. repack=True places the weight in CPU_REPACK (raises if this build
    would not repack that type/shape)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, n_in)
    tid = type_id(wtype)
    n_out = np.asarray(w_raw).nbytes // _base.ggml_row_size(tid, n_in)
    with _Graph(n_threads) as g:
        w = g.weight(w_raw, tid, [n_in, n_out], repack)
        xt = g.tensor(x, "F32")
        y = _base.ggml_mul_mat(g.ctx, w, xt)
        return _squeeze(g.compute(y), 2)


def mul_mat_nd(a: np.ndarray, a_type: str | int, b: np.ndarray, b_type: str | int = "F32",
               a_view: tuple | None = None, b_view: tuple | None = None,
               a_permute: Sequence[int] | None = None, b_permute: Sequence[int] | None = None,
               a_ne0: int | None = None, prec_f32: bool = False, n_threads: int = 1) -> np.ndarray:
    """General MUL_MAT(a, b) -> float32 array of ne [a.ne1, b.ne1, b.ne2, b.ne3] (after views).

    Each operand is first created from its array (ne = reversed shape; a quantized `a` needs
    a_ne0), then optionally viewed with `*_view = (ne, (nb1, nb2, nb3), byte_offset)` and
    permuted with `*_permute` (ggml_permute axes), in that order -- so llama.cpp's exact
    strides and contiguity can be rebuilt. prec_f32 sets GGML_PREC_F32 as llama.cpp does on kq."""
    with _Graph(n_threads) as g:
        ta = g.tensor(a, a_type, ne0=a_ne0)
        tb = g.tensor(b, b_type)
        if a_view is not None:
            ta = g.view(ta, *a_view)
        if b_view is not None:
            tb = g.view(tb, *b_view)
        if a_permute is not None:
            ta = g.permute(ta, a_permute)
        if b_permute is not None:
            tb = g.permute(tb, b_permute)
        y = _base.ggml_mul_mat(g.ctx, ta, tb)
        if prec_f32:
            _base.ggml_prec_set_acc(y, PREC_F32)
        return g.compute(y)


def _k_view(g: _Graph, k_cache: np.ndarray, n_kv: int, n_head_kv: int, hd: int) -> int:
    # cache_k [n_embd_k_gqa, kv_size] f16 -> view [hd, n_head_kv, n_kv] -> permute [hd, n_kv, n_head_kv]
    kv_size, n_embd = k_cache.shape
    k = g.tensor(k_cache, "F16")
    k = g.view(k, [hd, n_head_kv, n_kv, 1], [2 * hd, 2 * n_embd, 2 * n_embd * kv_size], 0)
    return g.permute(k, (0, 2, 1, 3))


def _q_view(g: _Graph, q: np.ndarray) -> int:
    # Qcur [hd, n_head, n_tok] f32 (contiguous) -> permute [hd, n_tok, n_head]
    n_tok, n_head, hd = q.shape
    t = g.tensor(q, "F32")
    t = g.view(t, [hd, n_head, n_tok, 1], [4 * hd, 4 * hd * n_head, 4 * hd * n_head * n_tok], 0)
    return g.permute(t, (0, 2, 1, 3))


def attn_kq(k_cache: np.ndarray, q: np.ndarray, n_kv: int, n_head_kv: int,
            n_threads: int = 1) -> np.ndarray:
    """kq-il: k_cache f16 [kv_size, n_head_kv*hd] (the whole cache, float16 or uint16 bits),
    q float32 [n_tok, n_head, hd] (ROPE'd Qcur) -> float32 [n_head, n_tok, n_kv]."""
    hd = q.shape[2]
    with _Graph(n_threads) as g:
        y = _base.ggml_mul_mat(g.ctx, _k_view(g, k_cache, n_kv, n_head_kv, hd), _q_view(g, q))
        _base.ggml_prec_set_acc(y, PREC_F32)
        return _squeeze(g.compute(y), 3)


def attn_kqv(v_cache_t: np.ndarray, kq: np.ndarray, n_kv: int, n_head_kv: int,
             n_threads: int = 1) -> np.ndarray:
    """kqv-il: v_cache_t f16 [n_head_kv*hd, kv_size] (the transposed V cache of flash-attention-off
    contexts), kq float32 [n_head, n_tok, n_kv] (kq_soft_max) -> float32 [n_head, n_tok, hd]."""
    n_embd, kv_size = v_cache_t.shape
    hd = n_embd // n_head_kv
    with _Graph(n_threads) as g:
        v = g.tensor(v_cache_t, "F16")
        # view [n_kv, n_head_kv, hd] (nb1 = kv_size*hd, nb2 = kv_size) -> permute [n_kv, hd, n_head_kv]
        v = g.view(v, [n_kv, n_head_kv, hd, 1], [2 * kv_size * hd, 2 * kv_size, 2 * kv_size * n_embd], 0)
        v = g.permute(v, (0, 2, 1, 3))
        s = g.tensor(kq, "F32")
        return _squeeze(g.compute(_base.ggml_mul_mat(g.ctx, v, s)), 3)


def flash_attn_ext(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, mask: np.ndarray,
                   scale: float, n_kv: int, n_head_kv: int, max_bias: float = 0.0,
                   softcap: float = 0.0, n_threads: int = 1) -> np.ndarray:
    """__fattn__-il as llama.cpp builds it: q float32 [n_tok, n_head, hd] (ROPE'd Qcur), k_cache and
    v_cache f16 [kv_size, n_head_kv*hd] (whole caches; V not transposed with flash attention), mask
    [n_tok, n_kv] (converted to F16, as llama.cpp's mask is with flash attention on) ->
    float32 [n_tok, n_head, hd] (ne [hd, n_head, n_tok]); precision F32 as llama.cpp sets."""
    hd = q.shape[2]
    with _Graph(n_threads) as g:
        kv_size, n_embd_v = v_cache.shape
        k = _k_view(g, k_cache, n_kv, n_head_kv, hd)
        v = g.tensor(v_cache, "F16")
        v = g.view(v, [hd, n_head_kv, n_kv, 1], [2 * hd, 2 * n_embd_v, 2 * n_embd_v * kv_size], 0)
        v = g.permute(v, (0, 2, 1, 3))
        m = g.tensor(np.asarray(mask).reshape(-1, n_kv), "F16")
        y = _base.ggml_flash_attn_ext(g.ctx, _q_view(g, q), k, v, m, scale, max_bias, softcap)
        _base.ggml_flash_attn_ext_set_n_kv_max(y, 0)
        _base.ggml_prec_set_acc(y, PREC_F32)
        return _squeeze(g.compute(y), 3)


def soft_max_ext(x: np.ndarray, mask: np.ndarray | None, scale: float, max_bias: float = 0.0,
                 mask_type: str = "F32", n_threads: int = 1) -> np.ndarray:
    """kq_soft_max: softmax(x*scale + mask) over the last axis; x [.., n_tok, n_kv] float32, mask
    [n_tok, n_kv] (F32 in llama.cpp's graph without flash attention)."""
    x = np.asarray(x, dtype=np.float32)
    with _Graph(n_threads) as g:
        tx = g.tensor(x, "F32")
        tm = g.tensor(np.asarray(mask).reshape(-1, x.shape[-1]), mask_type) if mask is not None else None
        return _squeeze(g.compute(_base.ggml_soft_max_ext(g.ctx, tx, tm, scale, max_bias)), x.ndim)


def rope_ext(x: np.ndarray, pos: Sequence[int], n_dims: int, mode: int, freq_base: float,
             freq_scale: float = 1.0, n_ctx_orig: int = 0, ext_factor: float = 0.0,
             attn_factor: float = 1.0, beta_fast: float = 32.0, beta_slow: float = 1.0,
             n_threads: int = 1) -> np.ndarray:
    """ROPE: x float32 [n_tok, n_head, hd] (ne [hd, n_head, n_tok]), pos int per token; mode 0
    (normal, llama) or 2 (NEOX: qwen2, qwen3, gemma3)."""
    x = np.asarray(x, dtype=np.float32)
    with _Graph(n_threads) as g:
        tx = g.tensor(x, "F32")
        tp = g.tensor(np.asarray(pos, dtype=np.int32), "I32")
        y = _base.ggml_rope_ext(g.ctx, tx, tp, None, n_dims, mode, n_ctx_orig, freq_base,
                                freq_scale, ext_factor, attn_factor, beta_fast, beta_slow)
        return _squeeze(g.compute(y), x.ndim)


def _binary(fn: Any, a: np.ndarray, b: np.ndarray, n_threads: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    with _Graph(n_threads) as g:
        y = fn(g.ctx, g.tensor(a, "F32"), g.tensor(np.asarray(b, dtype=np.float32), "F32"))
        return _squeeze(g.compute(y), a.ndim)


def _unary_op(fn: Any, x: np.ndarray, n_threads: int, *args: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    with _Graph(n_threads) as g:
        return _squeeze(g.compute(fn(g.ctx, g.tensor(x, "F32"), *args)), x.ndim)


def rms_norm(x: np.ndarray, eps: float, n_threads: int = 1) -> np.ndarray:
    """RMS_NORM over the last axis (no weight; llama.cpp multiplies by it in a separate MUL)."""
    return _unary_op(_base.ggml_rms_norm, x, n_threads, eps)


def glu(gate: np.ndarray, up: np.ndarray, op: str = "swiglu", n_threads: int = 1) -> np.ndarray:
    """ffn_swiglu / ffn_geglu: ggml_swiglu_split(gate, up) or ggml_geglu_split(gate, up)."""
    fn = {"swiglu": _base.ggml_swiglu_split, "geglu": _base.ggml_geglu_split}[op]
    return _binary(fn, gate, up, n_threads)


def scale(x: np.ndarray, s: float, n_threads: int = 1) -> np.ndarray:
    """SCALE: x * s."""
    return _unary_op(_base.ggml_scale, x, n_threads, s)


def add(a: np.ndarray, b: np.ndarray, n_threads: int = 1) -> np.ndarray:
    """ADD with ggml broadcasting of b (its shape repeats into a's)."""
    return _binary(_base.ggml_add, a, b, n_threads)


def mul(a: np.ndarray, b: np.ndarray, n_threads: int = 1) -> np.ndarray:
    """MUL with ggml broadcasting of b."""
    return _binary(_base.ggml_mul, a, b, n_threads)


def unary(x: np.ndarray, op: str, n_threads: int = 1) -> np.ndarray:
    """UNARY op by name (silu, gelu, gelu_erf, tanh, ...)."""
    return _unary_op(_base.ggml_unary, x, n_threads, _UNARY[op])


def get_rows(table: np.ndarray, ttype: str | int, n_cols: int, ids: Sequence[int],
             n_threads: int = 1) -> np.ndarray:
    """GET_ROWS: rows `ids` of a (possibly quantized) [n_rows, row] table, dequantized to float32
    [len(ids), n_cols] (the token embedding lookup)."""
    with _Graph(n_threads) as g:
        t = g.tensor(table, ttype, ne=[n_cols, np.shape(table)[0]])
        i = g.tensor(np.asarray(ids, dtype=np.int32), "I32")
        return _squeeze(g.compute(_base.ggml_get_rows(g.ctx, t, i)), 2)


def system_info() -> dict[str, str]:
    """What build this is: llama_print_system_info(), ggml version and commit, llama_cpp version."""
    return {"llama_cpp_python": L.__version__,
            "ggml_version": _base.ggml_version().decode(),
            "ggml_commit": _base.ggml_commit().decode(),
            "system_info": L.llama_print_system_info().decode().strip()}
