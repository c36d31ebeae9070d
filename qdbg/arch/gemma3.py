"""gemma3: Q/K norms, post-attention and post-FFN norms, GEGLU, embeddings scaled by sqrt(n_embd),
Q scaled by 1/sqrt(head_dim) after RoPE, and sliding-window layers (every 6th layer is global)
whose RoPE has its own base. Norm weights in GGUF already include Gemma's +1.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from qdbg.arch._common import base_fields, check_tensors
from qdbg.arch.config import ROPE_NEOX, ModelConfig, md_float, md_int, swa_pattern

ARCH = "gemma3"
FEATURES = {"qk_norm": True, "post_norms": True}  # the block's extra tensors (tensor_table)


def config(md: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]], where: str = "") -> ModelConfig:
    f = base_fields(ARCH, md, tensors, where)
    n_swa = md_int(md, f"{ARCH}.attention.sliding_window", 0, where=where)
    swa: tuple[bool, ...] = ()
    softcap = 0.0
    if n_swa > 0:
        period = md_int(md, f"{ARCH}.attention.sliding_window_pattern", 6, where=where)
        swa = swa_pattern(f["n_layer"], period)
    else:
        # llama.cpp builds the non-iSWA gemma3 graph, which soft-caps the final logits
        softcap = md_float(md, f"{ARCH}.final_logit_softcapping", 0.0, where=where)
    # llama_model_gemma3: the 27B (62 layers) scales by n_embd/n_head, the others by head_dim
    q_dim = f["n_embd"] / f["n_head"] if f["n_layer"] == 62 else f["head_dim"]
    cfg = ModelConfig(
        **f,
        rope_type=ROPE_NEOX,
        kq_scale=1.0,
        q_scale=1.0 / math.sqrt(q_dim),
        **FEATURES,
        ffn_act="gelu",
        embd_scale=math.sqrt(f["n_embd"]),
        final_logit_softcap=softcap,
        n_swa=n_swa,
        swa_layers=swa,
        rope_base_swa=md_float(md, f"{ARCH}.rope.freq_base_swa", 10000.0, where=where),
    )
    return check_tensors(cfg, tensors, where)
