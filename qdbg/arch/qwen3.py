"""qwen3: the llama block with per-head RMS norms of Q and K before RoPE (NeoX), no biases."""

from __future__ import annotations

from typing import Any, Mapping

from qdbg.arch._common import base_fields, check_tensors
from qdbg.arch.config import ROPE_NEOX, ModelConfig

ARCH = "qwen3"
FEATURES = {"qk_norm": True}  # the block's extra tensors (qdbg.arch._common.tensor_table)


def config(md: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]], where: str = "") -> ModelConfig:
    cfg = ModelConfig(**base_fields(ARCH, md, tensors, where), rope_type=ROPE_NEOX, **FEATURES)
    return check_tensors(cfg, tensors, where)
