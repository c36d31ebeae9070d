"""The numerics interface the engine is handed: every piece of arithmetic whose rounding matters.

The engine (qdbg.engine.forward) walks an architecture's ops and asks its `Numerics` object for
each result; it never branches on a mode. Layouts are numpy order: activations [n_tok, n_embd],
heads [n_tok, n_head, head_dim], scores [n_head, n_tok, n_kv]. Attention sees the KV cells
`kv_cells(n_used)` wide (llama.cpp pads its KV view; padding cells are zero and masked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qdbg.engine import ops
from qdbg.engine.weights import Weight
from qdbg.errors import UsageError

F32 = np.float32


@dataclass(frozen=True)
class RunSettings:
    """What a llama.cpp context was created with, where it changes the arithmetic.

    n_ubatch: prompts are evaluated in micro-batches of at most this many tokens (each its own
    graph, so a token's bits depend on its place in its micro-batch). n_ctx: the context size
    (padded to 256 by llama.cpp; it bounds the KV view). flash_attn: ggml_flash_attn_ext instead
    of kq/softmax/kqv. n_threads: only the split-KV flash-attention decode depends on it.
    """

    n_ubatch: int = 512
    n_ctx: int = 512
    flash_attn: bool = False
    n_threads: int = 1

    def __post_init__(self) -> None:
        if self.n_ubatch < 1:
            raise UsageError(f"--ubatch must be at least 1 (got {self.n_ubatch})")
        if self.n_ctx < 1:
            raise UsageError(f"--ctx-size must be at least 1 (got {self.n_ctx})")
        if self.n_threads < 1:
            raise UsageError(f"--threads must be at least 1 (got {self.n_threads})")

    @property
    def n_ctx_padded(self) -> int:
        return -(-self.n_ctx // 256) * 256

    def to_json(self) -> dict[str, object]:
        return {"n_ubatch": self.n_ubatch, "n_ctx": self.n_ctx, "flash_attn": self.flash_attn,
                "n_threads": self.n_threads}


class Numerics:
    """Base: float32 ops that every mode shares (llama.cpp's RMS norm, ADD, SCALE, GET_ROWS are
    exact in NumPy). Subclasses override what their mode does differently."""

    name = "base"
    profile = None              # a BuildProfile when the mode reproduces one build
    kv_f16 = True               # the KV cache holds F16 values (llama.cpp's default cache type)

    def __init__(self, settings: RunSettings | None = None) -> None:
        self.settings = settings or RunSettings()

    def describe(self) -> str:
        return self.name

    def to_json(self) -> dict[str, object]:
        return {"mode": self.name, "profile": self.profile.to_json() if self.profile else None,
                "settings": self.settings.to_json()}

    # -- elementwise ---------------------------------------------------------------------------
    def get_rows(self, w: Weight, ids: np.ndarray) -> np.ndarray:
        return w.rows(ids)

    def rms_norm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        return ops.rms_norm(x, w, eps)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ops.add(a, b)

    def scale(self, x: np.ndarray, s: float) -> np.ndarray:
        return ops.scale(x, ops.f32(s))

    def rope_cache(self, positions: np.ndarray, n_rot: int, base: float, freq_scale: float):
        return ops.rope_cache(positions, n_rot, base, freq_scale)

    def rope(self, x: np.ndarray, cache, n_rot: int, neox: bool) -> np.ndarray:
        cos, sin = cache
        return ops.rope(x, cos, sin, n_rot, neox)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return ops.swiglu(gate, up)

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return ops.geglu(gate, up)

    def softcap(self, x: np.ndarray, cap: float) -> np.ndarray:
        return ops.softcap(x, cap)

    def kv_store(self, x: np.ndarray) -> np.ndarray:
        """What the KV cache keeps of a new K or V row (F16 rounding for an F16 cache)."""
        return ops.to_f16(x) if self.kv_f16 else x

    # -- attention -----------------------------------------------------------------------------
    def kv_cells(self, n_used: int) -> int:
        """How many KV cells the attention of a pass reads when n_used cells hold tokens."""
        return n_used

    def matmul(self, x: np.ndarray, w: Weight) -> np.ndarray:
        raise NotImplementedError

    def attn_scores(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """kq: q [n_tok, n_head, hd], k [n_kv, n_head_kv, hd] -> [n_head, n_tok, n_kv]."""
        raise NotImplementedError

    def softmax(self, kq: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
        return ops.softmax_ext(kq, mask, scale)

    def attn_values(self, p: np.ndarray, v: np.ndarray) -> np.ndarray:
        """kqv_out: p [n_head, n_tok, n_kv], v [n_kv, n_head_kv, hd] -> [n_tok, n_head*hd]."""
        raise NotImplementedError

    def flash_attn(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray,
                   scale: float) -> np.ndarray:
        raise UsageError(f"--flash-attn on needs --mode exact (mode {self.name} has no flash attention)")
