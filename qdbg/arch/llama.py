"""llama: Llama 2/3, TinyLlama, Mistral, SmolLM. RMS norm, RoPE on adjacent pairs, SwiGLU."""

from __future__ import annotations

from typing import Any, Mapping

from qdbg.arch._common import base_fields, check_tensors
from qdbg.arch.config import ROPE_NORM, ModelConfig, md_float

ARCH = "llama"
FEATURES: dict[str, bool] = {}  # the block's extra tensors (qdbg.arch._common.tensor_table)
GRAPH_NAMES = {"attn_out": "attn_out"}  # ops llama.cpp's graph names (the others leave it unnamed)


def config(md: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]], where: str = "") -> ModelConfig:
    f = base_fields(ARCH, md, tensors, where)
    cfg = ModelConfig(
        **f,
        rope_type=ROPE_NORM,
        kq_scale=md_float(md, f"{ARCH}.attention.scale", 0.0, where=where),
    )
    return check_tensors(cfg, tensors, where)
