"""qwen2: the llama block with biases on the Q/K/V projections and NeoX RoPE."""

from __future__ import annotations

from typing import Any, Mapping

from qdbg.arch._common import base_fields, check_tensors
from qdbg.arch.config import ROPE_NEOX, ModelConfig

ARCH = "qwen2"
FEATURES = {"qkv_bias": True}  # the block's extra tensors (qdbg.arch._common.tensor_table)


def config(md: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]], where: str = "") -> ModelConfig:
    cfg = ModelConfig(**base_fields(ARCH, md, tensors, where), rope_type=ROPE_NEOX, **FEATURES)
    return check_tensors(cfg, tensors, where)
