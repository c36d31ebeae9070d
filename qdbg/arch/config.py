"""ModelConfig: everything the engine needs to know about a model, read once from GGUF metadata.

Each architecture module (llama.py, qwen2.py, ...) turns a file's metadata into one of these.
Field names follow llama.cpp's hparams where there is one, so the two can be read side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from qdbg.errors import GGUFError, UnsupportedError

ROPE_NORM = "norm"  # llama: rotate adjacent pairs (x[2i], x[2i+1])
ROPE_NEOX = "neox"  # qwen2/qwen3/gemma3: rotate halves (x[i], x[i + n_rot/2])


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int            # n_embd_head_k == n_embd_head_v for every architecture we support
    n_ff: int
    n_ctx_train: int
    rms_eps: float
    rope_type: str           # ROPE_NORM or ROPE_NEOX
    n_rot: int               # rotated dims per head (rope.dimension_count, default head_dim)
    rope_base: float         # rope.freq_base of the full-attention layers
    rope_freq_scale: float = 1.0   # 1/rope.scaling.factor for linear scaling, else 1
    kq_scale: float = 0.0    # softmax scale; 0 means 1/sqrt(head_dim)
    q_scale: float = 1.0     # gemma3 scales Q after RoPE (f_attention_scale) and uses kq_scale 1
    qkv_bias: bool = False   # qwen2: attn_q/k/v.bias
    qk_norm: bool = False    # qwen3, gemma3: per-head RMS norm of Q and K before RoPE
    post_norms: bool = False  # gemma3: post_attention_norm and post_ffw_norm
    ffn_act: str = "silu"    # "silu" (SwiGLU) or "gelu" (GEGLU, tanh approximation)
    embd_scale: float = 0.0  # gemma3: inp_embd * sqrt(n_embd); 0 means none
    final_logit_softcap: float = 0.0
    n_swa: int = 0           # sliding window length in tokens; 0 means no SWA layer
    swa_layers: tuple[bool, ...] = ()   # per layer: True if it uses the sliding window
    rope_base_swa: float = 10000.0
    rope_freq_scale_swa: float = 1.0
    tied_embeddings: bool = False       # no output.weight: logits use token_embd
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_head % self.n_head_kv:
            raise UnsupportedError(
                f"n_head {self.n_head} is not a multiple of n_head_kv {self.n_head_kv}"
            )

    @property
    def softmax_scale(self) -> float:
        return self.kq_scale if self.kq_scale else 1.0 / float(self.head_dim) ** 0.5

    def is_swa(self, layer: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[layer]

    def rope_params(self, layer: int) -> tuple[float, float]:
        """(freq_base, freq_scale) of one layer; SWA layers have their own base (gemma3)."""
        if self.is_swa(layer):
            return self.rope_base_swa, self.rope_freq_scale_swa
        return self.rope_base, self.rope_freq_scale


# --- metadata readers shared by the architecture modules -------------------------------------

MAX_DIM = 1 << 24  # no real model has a dimension this large; reject before allocating


def md_int(md: Mapping[str, Any], key: str, default: int | None = None, *, where: str = "") -> int:
    v = md.get(key, default)
    if v is None:
        raise GGUFError(f"{where}missing metadata key '{key}'")
    if hasattr(v, "__len__") and not isinstance(v, str):
        vals = [int(x) for x in v]
        if not vals or any(x != vals[0] for x in vals):
            raise UnsupportedError(f"{where}per-layer values for '{key}' are not supported")
        v = vals[0]
    if isinstance(v, bool) or not isinstance(v, (int,)) and not hasattr(v, "__index__"):
        raise GGUFError(f"{where}metadata key '{key}' should be an integer, got {v!r}")
    v = int(v)
    if v < 0 or v > MAX_DIM:
        raise GGUFError(f"{where}metadata key '{key}' has an absurd value {v}")
    return v


def md_float(md: Mapping[str, Any], key: str, default: float | None = None, *, where: str = "") -> float:
    v = md.get(key, default)
    if v is None:
        raise GGUFError(f"{where}missing metadata key '{key}'")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise GGUFError(f"{where}metadata key '{key}' should be a number, got {v!r}") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise GGUFError(f"{where}metadata key '{key}' is not finite")
    return f


def swa_pattern(n_layer: int, period: int) -> tuple[bool, ...]:
    """llama_hparams::set_swa_pattern(period, dense_first=false): every period-th layer is global."""
    if period <= 0:
        return tuple(False for _ in range(n_layer))
    return tuple((il % period) < (period - 1) for il in range(n_layer))
