"""llama.cpp recorder for the exact-mode goldens: every graph node's sha256, per micro-batch.

Recording tool only (imports llama_cpp). Like tools/llama_oracle.py it runs a GGUF through
llama-cpp-python's low-level API with a `cb_eval` scheduler callback, but it keeps a digest of every
node instead of its data, so long prompts and many scenarios stay small:

- each llama_decode may run several micro-batches (n_ubatch): each one's graph becomes its own step
  (a step ends when its `result_output` node has been computed);
- every non-view node (and every graph input flagged INPUT, op "NONE") is hashed as the sha256 of
  its logical contents as a C-contiguous array in its own element type (f32, f16, i32, i64), with a
  fingerprint (first 4 values, float64 sum); view ops (VIEW, RESHAPE, PERMUTE, TRANSPOSE) are listed
  without data so that occurrence numbers k match the graph (llama.cpp names several nodes alike);
- logits rows are taken per step (all positions are outputs).

The callback makes the scheduler compute one node per sub-graph, so the CPU backend's RMS_NORM+MUL
fusion is not applied while recording; `run(..., cb=False)` runs the same scenario unobserved so the
recorder can prove the logits are the same bits either way.
"""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import llama_cpp as L

from llama_oracle import GGML_MAX_DIMS, GGML_TENSOR_FLAG_INPUT, GgmlTensor, _base, check_layout, \
    load_model, new_context, type_name

_VIEW_OPS = {"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"}
_DTYPES = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64,
           28: np.float64, 30: np.uint16}


def raw_array(ptr: int) -> np.ndarray:
    """A host tensor as an owned C-contiguous numpy array in its own dtype (shape = ne reversed)."""
    t = GgmlTensor.from_address(ptr)
    dt = np.dtype(_DTYPES[t.type])
    extent = dt.itemsize + sum((t.ne[i] - 1) * t.nb[i] for i in range(GGML_MAX_DIMS))
    raw = np.frombuffer((ctypes.c_char * extent).from_address(t.data), dtype=np.uint8)
    shape = tuple(int(t.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))
    strides = tuple(int(t.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
    arr = np.lib.stride_tricks.as_strided(raw, shape=shape + (dt.itemsize,), strides=strides + (1,),
                                          writeable=False)
    return np.array(arr, copy=True, order="C").view(dt)[..., 0]


def digest(arr: np.ndarray) -> tuple[str, list[float], float]:
    """(sha256 hex of the C-contiguous bytes, first 4 values as float, float64 sum)."""
    a = np.ascontiguousarray(arr)
    flat = a.reshape(-1)
    vals = (flat.astype(np.uint32) << 16).view(np.float32) if a.dtype == np.uint16 else flat  # bf16
    return (hashlib.sha256(a.tobytes()).hexdigest(), [float(v) for v in vals[:4]],
            float(np.asarray(vals, dtype=np.float64).sum()))


@dataclass
class Step:
    """One micro-batch graph: nodes in graph order, and (after run) its positions and logits."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # key -> array (full mode only)
    positions: list[int] = field(default_factory=list)
    logits: np.ndarray | None = None


class _Recorder:
    """cb_eval: describes every node, hashes computed nodes and graph inputs, splits steps."""

    def __init__(self, full: bool) -> None:
        self.full = full
        self.error: BaseException | None = None
        self.steps: list[Step] = []
        self.weights: dict[str, dict[str, Any]] = {}
        self.cfunc = L.ggml_backend_sched_eval_callback(self._cb)
        self._open()

    def _open(self) -> None:
        self.cur = Step()
        self.count: dict[str, int] = {}
        self.meta: dict[int, dict[str, Any]] = {}
        self.inputs_done: set[int] = set()

    def close(self) -> None:
        if self.cur.nodes:
            self.steps.append(self.cur)
        self._open()

    def _describe(self, ptr: int, op: str | None = None) -> dict[str, Any]:
        t = GgmlTensor.from_address(ptr)
        name = t.name.decode()
        k = self.count.get(name, 0)
        self.count[name] = k + 1
        params = [int(x) for x in t.op_params]
        while params and params[-1] == 0:
            params.pop()
        m = {"name": name, "k": k, "op": op or _base.ggml_op_desc(ptr).decode(),
             "type": type_name(t.type), "ne": [int(x) for x in t.ne], "op_params": params}
        self.meta[ptr] = m
        self.cur.nodes.append(m)
        return m

    def _hash(self, ptr: int) -> None:
        m = self.meta[ptr]
        arr = raw_array(ptr)
        m["sha256"], m["head"], m["sum"] = digest(arr)
        if self.full:
            self.cur.arrays[f"{m['name']}#{m['k']}"] = arr

    def _srcs(self, ptr: int) -> None:
        t = GgmlTensor.from_address(ptr)
        srcs = []
        for s in t.src:
            if not s:
                continue
            st = GgmlTensor.from_address(s)
            if s in self.meta:
                srcs.append(f"{self.meta[s]['name']}#{self.meta[s]['k']}")
            elif st.flags & GGML_TENSOR_FLAG_INPUT:
                m = self._describe(s, "NONE")
                self.cur.nodes.insert(self.cur.nodes.index(self.meta[ptr]), self.cur.nodes.pop())
                self._hash(s)
                srcs.append(f"{m['name']}#{m['k']}")
            else:  # a weight (or the KV cache tensor itself)
                name = st.name.decode()
                srcs.append(name)
                if not name.startswith("cache_"):
                    self._weight(name, st, self.meta[ptr])
        self.meta[ptr]["srcs"] = srcs

    def _weight(self, name: str, st: GgmlTensor, user: dict[str, Any]) -> None:
        # tied embeddings: token_embd.weight feeds GET_ROWS from CPU_Mapped and the output MUL_MAT
        # through a duplicate that may sit in CPU_REPACK, so the buffer is recorded per use
        buf = _base.ggml_backend_buffer_name(st.buffer).decode() if st.buffer else ""
        w = self.weights.setdefault(name, {"type": type_name(st.type), "ne": [int(x) for x in st.ne],
                                           "buffer": buf, "buffer_by_use": {}})
        w["buffer_by_use"][user["name"]] = buf
        if user["op"] == "MUL_MAT":
            w["buffer"] = buf  # the buffer its matmul reads (what decides repacked kernels)

    def _cb(self, ptr: int, ask: bool, _ud: Any) -> bool:
        try:
            if ask:
                check_layout(ptr)
                m = self._describe(ptr)
                return m["op"] not in _VIEW_OPS
            self._srcs(ptr)
            self._hash(ptr)
            if self.meta[ptr]["name"] == "result_output":
                self.close()
            return True
        except BaseException as e:  # never let an exception cross into C
            self.error = self.error or e
            return False


@dataclass
class Settings:
    """Context settings of one scenario. n_threads is used for both llama_context_params.n_threads
    (one-token ubatches) and n_threads_batch (longer ubatches); llama_cpp.Llama would default
    n_threads_batch to the CPU count."""

    n_ctx: int = 512
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int = 1
    flash_attn: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _decode(ctx: Any, tokens: Sequence[int], pos0: int) -> None:
    batch = L.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = int(tok), pos0 + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        batch.n_tokens = len(tokens)
        rc = L.llama_decode(ctx, batch)
    finally:
        L.llama_batch_free(batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc} at position {pos0}")


def run(model_path: str, prompt: Sequence[int], n_decode: int, s: Settings, cb: bool = True,
        full: bool = False) -> dict[str, Any]:
    """Prompt (fed in n_batch chunks, one llama_decode each, as llama_cpp.Llama.eval does) then
    n_decode greedy one-token decodes. Returns {"tokens", "steps": [Step], "weights", "n_ctx",
    "logits" [n_positions, n_vocab]}; with cb=False no node is observed (steps empty)."""
    model = load_model(model_path)
    rec = _Recorder(full)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = s.n_ctx, s.n_batch, s.n_ubatch
    cp.n_threads = cp.n_threads_batch = s.n_threads
    cp.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if s.flash_attn
                          else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    if cb:
        cp.cb_eval, cp.cb_eval_user_data = rec.cfunc, None
    ctx = new_context(model, cp, model_path)
    try:
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        tokens, rows = list(prompt), []
        feeds = [list(prompt[i:i + s.n_batch]) for i in range(0, len(prompt), s.n_batch)]
        pos = 0
        for i in range(len(feeds) + n_decode):
            feed = feeds[i] if i < len(feeds) else [tokens[-1]]
            _decode(ctx, feed, pos)
            if rec.error is not None:
                raise RuntimeError(f"cb_eval failed: {rec.error!r}") from rec.error
            rec.close()
            rows += [np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, j), shape=(n_vocab,)).copy()
                     for j in range(len(feed))]
            pos += len(feed)
            if i >= len(feeds) - 1 and i < len(feeds) + n_decode - 1:
                tokens.append(int(np.argmax(rows[-1])))
        logits = np.stack(rows).astype(np.float32)
        for st in rec.steps:
            inp = next(n for n in st.nodes if n["name"] == "inp_pos")
            n = inp["ne"][0]
            st.positions = list(range(pos_of(st, rec.steps), pos_of(st, rec.steps) + n))
            st.logits = logits[st.positions[0]:st.positions[-1] + 1]
        return {"tokens": tokens, "steps": rec.steps, "weights": rec.weights, "logits": logits,
                "n_ctx": int(L.llama_n_ctx(ctx))}
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)


def pos_of(step: Step, steps: list[Step]) -> int:
    """First position of a step: the tokens of all earlier steps (one sequence, no gaps)."""
    total = 0
    for st in steps:
        if st is step:
            return total
        total += next(n for n in st.nodes if n["name"] == "inp_pos")["ne"][0]
    raise ValueError("step not in list")
