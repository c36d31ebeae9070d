"""llama.cpp oracle: record every named intermediate tensor of llama.cpp's CPU compute graph.

Recording tool only (imports llama_cpp; never imported by qdbg or its tests). It loads a GGUF with
llama-cpp-python, CPU only with the default extra buffer types (so AVX2 REPACK is used as a user gets
it), flash attention off, F16 KV cache, and installs a `cb_eval` scheduler callback that copies out
each wanted graph node right after it is computed. `record()` decodes a prompt batch (logits requested
for every position) and then single-token steps, and returns a plain dict (see `record`).

Node naming (llama arch, llama.cpp as bundled with llama_cpp_python 0.3.36; layer il=0, prompt of n
tokens, n_embd=576, 9 heads, 3 KV heads, head_dim 64, as seen on SmolLM2-135M). `name op ne`:

    embd            GET_ROWS   [n_embd, n]           token_embd.weight, inp_tokens (no `inp_embd`)
    norm-0          RMS_NORM   [n_embd, n]           k=0: attention pre-norm, k=1: FFN pre-norm
    attn_norm-0     MUL        [n_embd, n]           norm-0 * blk.0.attn_norm.weight
    Qcur-0          MUL_MAT    [n_head*hd, n]        k=0
    Qcur-0          RESHAPE    [hd, n_head, n]       k=1 (view of k=0)
    Qcur-0          ROPE       [hd, n_head, n]       k=2, srcs Qcur-0, inp_pos
    Vcur-0          MUL_MAT / RESHAPE                k=0/1 (emitted before Kcur)
    Kcur-0          MUL_MAT / RESHAPE / ROPE         k=0/1/2
    (unnamed views, SET_ROWS into cache_k_l0 / cache_v_l0 (V stored transposed), permutes)
    kq-0            MUL_MAT    [n_kv, n, n_head]     K(f16 cache view) x Q
    kq_soft_max-0   SOFT_MAX   [n_kv, n, n_head]     srcs kq-0, attn_inp_kq_mask (scale in op_params)
    kqv-0           MUL_MAT    [hd, n, n_head]       V(f16 cache view, transposed) x softmax
    kqv_out-0       CONT       [n_embd, n]           of the permuted kqv-0
    attn_out-0      MUL_MAT    [n_embd, n]
    ffn_inp-0       ADD        [n_embd, n]           attn_out-0 + residual
    ffn_norm-0      MUL        [n_embd, n]           norm-0 (k=1) * blk.0.ffn_norm.weight
    ffn_gate-0, ffn_up-0  MUL_MAT [n_ff, n]
    ffn_swiglu-0    SWIGLU     [n_ff, n]             fused silu(gate)*up (GLU op)
    ffn_out-0       MUL_MAT    [n_embd, n]
    l_out-0         ADD        [n_embd, n]           ffn_out-0 + ffn_inp-0
    ... then `norm` RMS_NORM, `result_norm` MUL, `result_output` MUL_MAT [n_vocab, n].
Q for kq is rounded to f16 by ggml's mul_mat (K is f16), so kq matches an f16(Q) x K product.

In the LAST layer llama.cpp applies GET_ROWS(out_ids) to attn_out-L and l_out-(L-1) (unnamed nodes
`node_<i>`) before ffn_inp-L; with every position requested as output it is the identity.

Other archs (same names unless listed; `node_<i>` = unnamed, index depends on the graph):
  qwen2   Q/K/V: MUL_MAT k=0, bias ADD k=1, RESHAPE k=2, ROPE k=3 (Q, K). The attention output
          matmul is unnamed (node_<i>), feeding ffn_inp-il; no `attn_out-il`.
  qwen3   after RESHAPE: `norm-il` RMS_NORM then `Qcur_normed-il` / `Kcur_normed-il` MUL, then
          ROPE (Qcur k=2, Kcur k=2); norm-il k=0 attn, 1 q-norm, 2 k-norm, 3 ffn. Unnamed attn out.
  gemma3  `inp_scaled` SCALE after embd; Q/K norms as qwen3; Q is scaled by an unnamed SCALE node
          (kq_soft_max scale is then 1.0); K before V; unnamed attn out matmul, `norm-il` k=3
          RMS_NORM, `attn_post_norm-il` MUL, `sa_out-il` ADD, norm-il k=4, `ffn_norm-il`,
          `ffn_geglu-il` GEGLU (gelu), `ffn_out-il`, then an RMS_NORM named plain `norm` (no
          layer suffix: k counts across layers; the final norm is the last `norm`),
          `ffn_post_norm-il` MUL, `l_out-il` ADD. Two masks, both named attn_inp_kq_mask:
          k=0 is the sliding-window one (layers il % 6 != 5), k=1 the global one.
Unnamed views, permutes and SET_ROWS (the KV-cache writes) are not recorded.

KV cache: llama.cpp pads the context to 256 cells (n_ctx=64 becomes 256), and with flash attention
off n_kv = 256 for every step here: kq/kq_soft_max have 256 columns although only n_past+n tokens are
real; the mask has -inf in the padding columns and the K/V cache rows there are zero. Each step's
`n_kv` (mask ne[0]) is recorded. The f16 K and V views that kq-/kqv- read (`cache_k_l0 (view)
(permuted)`, `cache_v_l0 (view) (permuted)`) and the graph inputs (inp_tokens, inp_pos,
attn_inp_kq_mask, k/v row indices, out_ids) are recorded too, with op "NONE" for inputs.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Callable, Sequence

import numpy as np
import llama_cpp as L

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_MAX_OP_PARAMS = 64
GGML_TENSOR_FLAG_INPUT = 1


class GgmlTensor(ctypes.Structure):
    """Mirror of `struct ggml_tensor` of the installed ggml (checked by `check_layout`)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


_LIBDIR = os.path.join(os.path.dirname(L.__file__), "lib")
_base = ctypes.CDLL(os.path.join(_LIBDIR, "libggml-base.so"))
for _fn, _res, _args in [
    ("ggml_get_name", ctypes.c_void_p, [ctypes.c_void_p]),
    ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
    ("ggml_op_desc", ctypes.c_char_p, [ctypes.c_void_p]),
    ("ggml_type_name", ctypes.c_char_p, [ctypes.c_int]),
    ("ggml_type_size", ctypes.c_size_t, [ctypes.c_int]),
    ("ggml_blck_size", ctypes.c_int64, [ctypes.c_int]),
    ("ggml_backend_buffer_name", ctypes.c_char_p, [ctypes.c_void_p]),
]:
    getattr(_base, _fn).restype = _res
    getattr(_base, _fn).argtypes = _args

# ggml type id -> numpy dtype of one element (only non-block types appear in graph nodes)
_NP = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64,
       28: np.float64, 30: np.uint16}
_BF16 = 30

FTYPES = {"F32": L.LLAMA_FTYPE_ALL_F32, "F16": L.LLAMA_FTYPE_MOSTLY_F16,
          "BF16": L.LLAMA_FTYPE_MOSTLY_BF16, "Q3_K_S": L.LLAMA_FTYPE_MOSTLY_Q3_K_S,
          "Q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_0": L.LLAMA_FTYPE_MOSTLY_Q4_0,
          "Q4_1": L.LLAMA_FTYPE_MOSTLY_Q4_1, "Q5_0": L.LLAMA_FTYPE_MOSTLY_Q5_0,
          "Q5_1": L.LLAMA_FTYPE_MOSTLY_Q5_1, "Q2_K": L.LLAMA_FTYPE_MOSTLY_Q2_K,
          "Q3_K_M": L.LLAMA_FTYPE_MOSTLY_Q3_K_M, "Q4_K_S": L.LLAMA_FTYPE_MOSTLY_Q4_K_S,
          "Q4_K_M": L.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q5_K_S": L.LLAMA_FTYPE_MOSTLY_Q5_K_S,
          "Q5_K_M": L.LLAMA_FTYPE_MOSTLY_Q5_K_M, "Q6_K": L.LLAMA_FTYPE_MOSTLY_Q6_K}


def type_name(t: int) -> str:
    """ggml type name (`f32`, `f16`, `q4_K`...)."""
    return _base.ggml_type_name(t).decode()


def _nbytes(t: GgmlTensor) -> int:
    # same rule as ggml_nbytes: first dim counted in blocks, others through their strides
    bs, ts = _base.ggml_blck_size(t.type), _base.ggml_type_size(t.type)
    if bs == 1:
        return ts + sum((t.ne[i] - 1) * t.nb[i] for i in range(GGML_MAX_DIMS))
    return t.ne[0] * t.nb[0] // bs + sum((t.ne[i] - 1) * t.nb[i] for i in range(1, GGML_MAX_DIMS))


def check_layout(ptr: int) -> None:
    """Raise RuntimeError if `GgmlTensor` disagrees with the library about the tensor at `ptr`."""
    t = GgmlTensor.from_address(ptr)
    off = _base.ggml_get_name(ptr) - ptr
    if off != GgmlTensor.name.offset:
        raise RuntimeError(f"ggml_tensor layout: name at +{off}, struct says +{GgmlTensor.name.offset}")
    if _nbytes(t) != _base.ggml_nbytes(ptr):
        raise RuntimeError(f"ggml_tensor layout: nbytes {_nbytes(t)} != ggml_nbytes "
                           f"{_base.ggml_nbytes(ptr)} for {t.name!r}")


def tensor_to_numpy(ptr: int) -> np.ndarray:
    """Copy a host tensor out as numpy, shape = ne reversed (4 dims), strides nb honoured.

    F16/BF16 become float32 (exact); integer types keep their dtype.
    """
    t = GgmlTensor.from_address(ptr)
    if t.type not in _NP:
        raise RuntimeError(f"cannot read tensor {t.name!r} of type {type_name(t.type)}")
    if not t.data:
        raise RuntimeError(f"tensor {t.name!r} has no data")
    dt = np.dtype(_NP[t.type])
    extent = dt.itemsize + sum((t.ne[i] - 1) * t.nb[i] for i in range(GGML_MAX_DIMS))
    raw = np.frombuffer((ctypes.c_char * extent).from_address(t.data), dtype=np.uint8)
    shape = tuple(int(t.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))
    strides = tuple(int(t.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
    # strided byte view [ne3, ne2, ne1, ne0, itemsize] -> owned contiguous copy -> reinterpret
    arr = np.lib.stride_tricks.as_strided(raw, shape=shape + (dt.itemsize,),
                                          strides=strides + (1,), writeable=False)
    out = np.array(arr, copy=True, order="C").view(dt)[..., 0]
    if t.type == 1:
        return out.astype(np.float32)
    if t.type == _BF16:
        return (out.astype(np.uint32) << 16).view(np.float32)
    return out


def is_generic_name(name: str) -> bool:
    """True for names ggml made up (``node_12``, ``X (view)``, ``X (permuted)``, empty)."""
    return name == "" or name.startswith(("node_", "leaf_")) or " (" in name


def _default_keep(name: str, op: str) -> bool:
    return not is_generic_name(name)


_VIEW_OPS = {"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"}


class _Recorder:
    """Holds the cb_eval callback and what it copied out for the current llama_decode.

    Every computed (non-view) node is copied right after it is computed (later nodes may reuse its
    memory in place); `finish()` then keeps the wanted ones, plus the unnamed nodes that feed a kept
    node through views only (e.g. qwen2's attention output matmul `node_31` feeding ffn_inp-0).
    """

    def __init__(self, keep: Callable[[str, str], bool]) -> None:
        self.keep = keep
        self.error: BaseException | None = None
        self.checked = False
        self.cfunc = L.ggml_backend_sched_eval_callback(self._cb)
        self.weights: dict[str, dict[str, Any]] = {}
        self.new_step()

    def new_step(self) -> None:
        self.meta: dict[int, dict[str, Any]] = {}  # tensor address -> node description
        self.order: list[int] = []  # graph order (inputs inserted before their first consumer)
        self.data: dict[int, np.ndarray] = {}
        self.forced: set[int] = set()  # inputs and KV-cache views: always kept
        self.count: dict[str, int] = {}

    def _describe(self, ptr: int) -> dict[str, Any]:
        t = GgmlTensor.from_address(ptr)
        name = t.name.decode()
        k = self.count.get(name, 0)
        self.count[name] = k + 1
        m = {"name": name, "k": k, "key": f"{name}#{k}", "op": _base.ggml_op_desc(ptr).decode(),
             "type": type_name(t.type), "shape": [int(x) for x in t.ne],
             "src_ptrs": [s for s in t.src if s], "op_params": [int(x) for x in t.op_params]}
        self.meta[ptr] = m
        return m

    def _cb(self, ptr: int, ask: bool, _ud: Any) -> bool:
        try:
            if ask:
                if not self.checked:
                    check_layout(ptr)
                    self.checked = True
                m = self._describe(ptr)
                self.order.append(ptr)
                return m["op"] not in _VIEW_OPS or self.keep(m["name"], m["op"])
            check_layout(ptr)
            self._sources(ptr)
            self.data[ptr] = tensor_to_numpy(ptr)
            return True
        except BaseException as e:  # never let an exception cross into C
            self.error = self.error or e
            return False

    def _sources(self, ptr: int) -> None:
        """Copy graph inputs (leaf srcs flagged INPUT) and the KV-cache views kq-/kqv- read."""
        m = self.meta[ptr]
        attn = m["op"] == "MUL_MAT" and m["name"].startswith(("kq-", "kqv-"))
        for s in m["src_ptrs"]:
            st = GgmlTensor.from_address(s)
            if s in self.meta:  # a graph node
                if attn and self.meta[s]["name"].startswith("cache_") and s not in self.data:
                    check_layout(s)
                    self.data[s] = tensor_to_numpy(s)
                    self.forced.add(s)
            elif st.flags & GGML_TENSOR_FLAG_INPUT:
                check_layout(s)
                self._describe(s)
                self.order.insert(self.order.index(ptr), s)
                self.data[s] = tensor_to_numpy(s)
                self.forced.add(s)
            elif st.name.decode() not in self.weights and not st.name.startswith(b"cache_"):
                buf = _base.ggml_backend_buffer_name(st.buffer).decode() if st.buffer else ""
                self.weights[st.name.decode()] = {"type": type_name(st.type), "buffer": buf,
                                                  "shape": [int(x) for x in st.ne]}

    def _root(self, s: int) -> int:
        # follow view ops back to the tensor that holds the data
        while s in self.meta and self.meta[s]["op"] in _VIEW_OPS and s not in self.data:
            s = self.meta[s]["src_ptrs"][0]
        return s

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """Return (nodes in graph order, tensors by key) for the step just decoded."""
        kept = {p for p in self.order if p in self.data
                and (p in self.forced or self.keep(self.meta[p]["name"], self.meta[p]["op"]))}
        todo = list(kept)
        while todo:  # unnamed computed nodes feeding kept ones (through views), transitively
            new = {r for r in map(self._root, self.meta[todo.pop()]["src_ptrs"])
                   if r in self.data and r not in kept}
            kept |= new
            todo.extend(new)
        nodes, tensors = [], {}
        for p in self.order:
            if p not in kept:
                continue
            m = dict(self.meta[p])
            srcs = m.pop("src_ptrs")
            m["srcs"] = [self.meta[s]["name"] if s in self.meta
                         else GgmlTensor.from_address(s).name.decode() for s in srcs]
            m["src_keys"] = [self.meta[s]["key"] if s in self.meta else None for s in srcs]
            m["src_roots"] = [self.meta[r]["key"] if r in kept else None
                              for r in map(self._root, srcs)]
            nodes.append(m)
            tensors[m["key"]] = self.data[p]
        return nodes, tensors


_LOG_SINK: list[Any] = []


def quiet_logs(verbose: bool = False) -> None:
    """Silence llama.cpp's stderr logging (unless verbose)."""
    if verbose or _LOG_SINK:
        return
    _LOG_SINK.append(L.llama_log_callback(lambda level, text, ud: None))
    L.llama_log_set(_LOG_SINK[0], ctypes.c_void_p())


def load_model(model_path: str, verbose: bool = False) -> Any:
    """Load a GGUF into llama.cpp on the CPU only (no GPU layers); RuntimeError if it cannot."""
    quiet_logs(verbose)
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = L.llama_model_load_from_file(model_path.encode(), mp)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {model_path}")
    return model


def new_context(model: Any, cp: Any, model_path: str) -> Any:
    """llama_init_from_model(model, cp); on failure the model is freed and RuntimeError raised."""
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        L.llama_model_free(model)
        raise RuntimeError(f"llama.cpp could not create a context for {model_path}")
    return ctx


def quantize(src: str, dst: str, ftype: str, nthread: int = 1, verbose: bool = False,
             pure: bool = False) -> None:
    """Quantize GGUF `src` into `dst` with llama.cpp's own llama_model_quantize (default params;
    pure=True sets params.pure: every quantizable tensor gets the ftype's default type)."""
    quiet_logs(verbose)
    if ftype not in FTYPES:
        raise ValueError(f"unknown ftype {ftype!r}; known: {sorted(FTYPES)}")
    p = L.llama_model_quantize_default_params()
    p.ftype = FTYPES[ftype]
    p.nthread = nthread
    p.pure = pure
    rc = L.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {ftype}) failed: {rc}")


def _decode(ctx: Any, rec: _Recorder, tokens: Sequence[int], pos0: int) -> None:
    n = len(tokens)
    batch = L.llama_batch_init(n, 0, 1)
    try:
        for i, tok in enumerate(tokens):
            batch.token[i] = int(tok)
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1  # every position is an output: no row dropped by inp_out_ids
        batch.n_tokens = n
        rc = L.llama_decode(ctx, batch)
    finally:
        L.llama_batch_free(batch)
    if rec.error is not None:
        raise RuntimeError(f"cb_eval failed: {rec.error!r}") from rec.error
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc} at position {pos0}")


def record(model_path: str, prompt: Sequence[int], n_decode: int = 3,
           forced: Sequence[int] | None = None, n_ctx: int = 64, n_threads: int = 1,
           keep: Callable[[str, str], bool] = _default_keep, verbose: bool = False) -> dict[str, Any]:
    """Run llama.cpp on `prompt` (one batch) then `n_decode` single-token steps and record.

    The token fed at each decode step is `forced[i]` if given, else the argmax (greedy, first max)
    of the previous step's last logits row (what llama.cpp's greedy sampler picks).
    `keep(name, op)` selects graph nodes (default: every non-generic name); unnamed computed nodes
    feeding a kept node, graph inputs and the KV-cache views read by kq-/kqv- are added.

    Returns {"tokens", "n_prompt", "logits" [n_positions, n_vocab] f32, "n_ctx" (as padded by
    llama.cpp), "n_kv" per step, "weights" {name: {type, buffer (CPU_Mapped / CPU_REPACK...),
    shape}}, "llama_cpp_version", "steps": [{"kind": "prompt"|"decode", "positions", "n_kv",
    "nodes": [{name, k, key, op, type, shape (ne), srcs, src_keys, src_roots, op_params}],
    "tensors": {key: ndarray shaped ne[::-1]}}]}. Node keys are "<name>#<k>", k being the
    occurrence index of that name among all nodes of the step's graph; src_keys name the direct
    sources (None for weights), src_roots the recorded node holding each source's data (through
    unrecorded views), or None.
    """
    model = load_model(model_path, verbose)
    rec = _Recorder(keep)
    cp = L.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = max(cp.n_batch, len(prompt))  # the prompt must be one ubatch (one graph)
    cp.n_ubatch = max(cp.n_ubatch, len(prompt))
    cp.n_threads = cp.n_threads_batch = n_threads
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.cb_eval = rec.cfunc
    cp.cb_eval_user_data = None
    ctx = new_context(model, cp, model_path)
    try:
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        tokens, steps, logits = list(prompt), [], []
        feed: list[int] = list(prompt)
        for step in range(n_decode + 1):
            pos0 = len(tokens) - len(feed)
            rec.new_step()
            _decode(ctx, rec, feed, pos0)
            nodes, tensors = rec.finish()
            rows = [np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy()
                    for i in range(len(feed))]
            logits.extend(rows)
            mask = next((n for n in nodes if n["name"].endswith("kq_mask")), None)
            steps.append({"kind": "prompt" if step == 0 else "decode",
                          "positions": list(range(pos0, pos0 + len(feed))),
                          "n_kv": mask["shape"][0] if mask else None,
                          "nodes": nodes, "tensors": tensors})
            if step == n_decode:
                break
            nxt = int(forced[step]) if forced is not None else int(np.argmax(rows[-1]))
            tokens.append(nxt)
            feed = [nxt]
        return {"tokens": tokens, "n_prompt": len(prompt), "logits": np.stack(logits),
                "n_ctx": int(L.llama_n_ctx(ctx)),
                "n_kv": [s["n_kv"] for s in steps], "weights": rec.weights,
                "llama_cpp_version": L.__version__, "steps": steps}
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)
