"""OpResult: what the engine yields after every sub-op."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class OpResult:
    """One named sub-op's output, with enough identity to line it up with llama.cpp's graph.

    `name` is unique within a step (`attn_norm-5`, `Qcur_rope-5`); `ggml_name`/`ggml_op` say which
    node of llama.cpp's graph holds the same tensor (several nodes may share a name there, e.g. the
    MUL_MAT and the ROPE are both `Qcur-5`). `value` is what the run goes on with; if an override
    replaced it, `computed` keeps what the op itself produced.
    """

    name: str
    kind: str                      # embed, norm, matmul, rope, scores, softmax, attn, residual, act, logits
    layer: int | None
    value: np.ndarray
    axes: tuple[str, ...]          # e.g. ("token", "channel"), ("token", "head", "dim"), ("head", "token", "kv")
    inputs: tuple[str, ...] = ()   # names of the ops this one read
    weight: str | None = None      # GGUF tensor name, e.g. blk.5.ffn_up.weight
    weight_type: str | None = None  # its quant type, e.g. Q4_K
    ggml_name: str | None = None
    ggml_op: str | None = None
    step: int = 0                  # 0 for the prompt batch, then 1, 2, ... per decoded token
    positions: tuple[int, ...] = ()
    computed: np.ndarray | None = None

    @property
    def overridden(self) -> bool:
        return self.computed is not None

    def __repr__(self) -> str:
        return f"OpResult({self.name!r}, step={self.step}, shape={tuple(self.value.shape)})"
