"""The ops of one forward pass, known before computing any: names, kinds, layers and weights.

The debugger checks a breakpoint or go-to target against this list at once (a name, glob, kind
or GGUF tensor name that matches nothing is an error before any op is computed), and resolves a
tensor name (`blk.7.ffn_down.weight`) to the op that reads it (`ffn_out-7`). It reads the
engine's own op list (qdbg.engine.graph.pass_ops).
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
    """Every op of one pass, in the engine's order, for a model config (from the engine's own op
    list, qdbg.engine.graph, so the two cannot drift apart)."""
    from qdbg.engine.graph import pass_ops as graph_ops

    return [OpInfo(o.name, o.kind, o.layer, o.weight) for o in graph_ops(cfg, flash_attn)]


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
