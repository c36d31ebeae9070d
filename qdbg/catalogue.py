"""The ops of one forward pass, known before computing any: names, kinds, layers and weights.

The debugger checks a breakpoint or go-to target against this list at once (a name, glob, kind
or GGUF tensor name that matches nothing is an error before any op is computed), and resolves a
tensor name (`blk.7.ffn_down.weight`) to the op that reads it (`ffn_out-7`). It follows
qdbg.engine.forward.Engine.forward op for op; tests/test_catalogue.py checks the two agree for
every synthetic architecture with and without flash attention.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable

from qdbg.errors import UsageError


@dataclass(frozen=True)
class OpInfo:
    name: str
    kind: str
    layer: int | None
    weight: str | None


def pass_ops(cfg: Any, flash_attn: bool) -> list[OpInfo]:
    """Every op of one pass, in the engine's order, for a model config."""
    ops = [OpInfo("inp_embd", "embed", None, "token_embd.weight")]
    if getattr(cfg, "embd_scale", None):
        ops.append(OpInfo("inp_scaled", "scale", None, None))
    for il in range(cfg.n_layer):
        b = f"blk.{il}."

        def add(base: str, kind: str, weight: str | None = None) -> None:
            ops.append(OpInfo(f"{base}-{il}", kind, il, None if weight is None else b + weight))

        add("attn_norm", "norm", "attn_norm.weight")
        for p in ("q", "k", "v"):
            add(f"{p.upper()}cur", "matmul", f"attn_{p}.weight")
        for p in ("Q", "K"):
            if cfg.qk_norm:
                add(f"{p}cur_normed", "norm", f"attn_{p.lower()}_norm.weight")
            add(f"{p}cur_rope", "rope")
        if flash_attn:
            add("kqv_out", "attn")
        else:
            add("kq", "scores")
            add("kq_soft_max", "softmax")
            add("kqv_out", "attn")
        add("attn_out", "matmul", "attn_output.weight")
        if cfg.post_norms:
            add("attn_post_norm", "norm", "post_attention_norm.weight")
        add("sa_out" if cfg.post_norms else "ffn_inp", "residual")
        add("ffn_norm", "norm", "ffn_norm.weight")
        add("ffn_gate", "matmul", "ffn_gate.weight")
        add("ffn_up", "matmul", "ffn_up.weight")
        add("ffn_geglu" if cfg.ffn_act == "gelu" else "ffn_swiglu", "act")
        add("ffn_out", "matmul", "ffn_down.weight")
        if cfg.post_norms:
            add("ffn_post_norm", "norm", "post_ffw_norm.weight")
        add("l_out", "residual")
    ops.append(OpInfo("result_norm", "norm", None, "output_norm.weight"))
    ops.append(OpInfo("result_output", "logits", None,
                      "token_embd.weight" if cfg.tied_embeddings else "output.weight"))
    return ops


class Catalogue:
    """The ops of a pass, for matching targets by name, glob, kind or tensor name."""

    def __init__(self, ops: Iterable[OpInfo]) -> None:
        self.ops = list(ops)
        self.names = {o.name for o in self.ops}
        self.kinds = sorted({o.kind for o in self.ops})
        self.by_weight: dict[str, list[str]] = {}
        for o in self.ops:
            if o.weight:
                self.by_weight.setdefault(o.weight, []).append(o.name)

    def is_tensor(self, target: str) -> bool:
        return target in self.by_weight

    def match_names(self, pattern: str) -> list[str]:
        """Op names equal to `pattern`, matching it as a glob, or reading it as a tensor."""
        if pattern in self.by_weight:
            return list(self.by_weight[pattern])
        return [o.name for o in self.ops if o.name == pattern or fnmatch.fnmatchcase(o.name, pattern)]

    def check_target(self, pattern: str) -> list[str]:
        """The op names `pattern` (name, glob or tensor name) matches; UsageError if none."""
        names = self.match_names(pattern)
        if not names:
            near = sorted(n for n in self.names if n.split("-")[0] == pattern.split("-")[0])[:3]
            hint = f" (e.g. {', '.join(near)})" if near else " (ops are named like ffn_up-5; tensors like blk.5.ffn_up.weight)"
            raise UsageError(f"no op or tensor matches {pattern!r}{hint}")
        return names

    def check_kind(self, pattern: str) -> None:
        """UsageError unless some op kind equals or glob-matches `pattern`."""
        if not any(k == pattern or fnmatch.fnmatchcase(k, pattern) for k in self.kinds):
            raise UsageError(f"no op kind matches {pattern!r}; kinds are {', '.join(self.kinds)}")
