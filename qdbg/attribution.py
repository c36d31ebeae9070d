"""Attribution at every op: how much of the A-vs-B difference an op adds, and how much it inherits.

For one op f, with side A's parameters and arithmetic f_A, B's f_B, and the inputs each side fed
it, x_A and x_B:

    total     = f_A(x_A) - f_B(x_B)          (what the run shows at this op)
    local     = f_A(x_B) - f_B(x_B)          (A's op on B's input: what this op adds)
    inherited = f_A(x_A) - f_A(x_B)          (A's op on both inputs: what came in with them)

so local + inherited = total (exactly, in float64, from float32 outputs). Each is also given
relative to ||f_B(x_B)||, as `local_rel`, `inherited_rel`, `total_rel` (the latter is
qdbg.metrics' rel_rms). f_A(x_A) and f_B(x_B) are the op results the engines yielded; f_A(x_B) is
`recompute(res_a, x_B, engine_a)`: A's op evaluated again on B's inputs. What that means per
op kind (the op's own weights and settings always come from A, the inputs from B):

- embed    the token ids are the same on both sides, so f_A(x_B) = f_A(x_A): local = total.
- scale    x * embd_scale (gemma3's inp_scaled).
- norm     RMS norm of B's input times A's norm weight (F32 norm weights usually agree, then local
           is 0 up to the arithmetic); the Q/K norms reshape their input to heads first.
- matmul   A's numerics.matmul(x_B, A's weight), plus A's bias where the arch has one (qwen2 Q/K/V).
- logits   the output matmul as above, then the final logit softcap where the arch has one.
- rope     RoPE of B's input at this pass's positions.
- scores   A's kq product of B's Q (gemma3: scaled) and B's K, appended to B's K cache of earlier
           passes (F16 as the cache stores it).
- softmax  the masked, scaled softmax of B's scores.
- attn     B's softmax times B's V cache and new V; with flash attention, the whole attention of
           B's Q, K and V.
- residual B's two inputs added; act: SwiGLU / GeGLU of B's gate and up.

For a weightless op both sides run the same arithmetic (unless the numeric modes differ), so its
local part is 0 and everything is inherited; a weighted op's local part is its weights' error.

`attribute()` is the pure function for one op; `attribute_run()` walks two engines in lockstep
and yields one `Attribution` per op (what bisect ranks tensors by).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from qdbg.engine.result import OpResult
from qdbg.errors import ModelMismatchError, QdbgError
from qdbg.metrics import _norm

__all__ = ["Attribution", "attribute", "attribute_run", "recompute"]


@dataclass(eq=False)
class Attribution:
    """One op's split of the A-vs-B difference (arrays float64, None when not kept)."""

    name: str
    kind: str
    layer: int | None
    step: int
    weight: str | None
    weight_type_a: str | None
    weight_type_b: str | None
    local_rel: float
    inherited_rel: float
    total_rel: float
    local: np.ndarray | None = None
    inherited: np.ndarray | None = None
    total: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        return {"op": self.name, "kind": self.kind, "layer": self.layer, "step": self.step,
                "weight": self.weight, "type_a": self.weight_type_a, "type_b": self.weight_type_b,
                "local": self.local_rel, "inherited": self.inherited_rel, "total": self.total_rel}


def recompute(res: OpResult, inputs: Sequence[np.ndarray], side: Any, kv: Any = None) -> np.ndarray:
    """Op `res` evaluated again with `side`'s weights and arithmetic on `inputs` (the values of
    `res.inputs`, in order). `side` is the Engine that produced `res`. `kv` (default `side`) is the
    Engine whose KV cache of earlier passes belongs with `inputs` — the attention ops read it as
    part of their input; it must be in the middle of the same pass (its cache still holds the
    earlier passes only, as during `forward`). The op itself is the engine's own
    (`Engine.compute` on its op list), so attribution cannot drift from what the run computes."""
    if res.kind == "embed":  # the token ids are the same on both sides
        return res.value
    return side.compute(side.op(res.name), inputs, res.positions, kv=side if kv is None else kv)


def _rel(d: np.ndarray, ref_norm: float) -> float:
    n = _norm(d.reshape(-1))
    if ref_norm == 0.0:
        return 0.0 if n == 0.0 else math.inf
    return n / ref_norm


def attribute(res_a: OpResult, res_b: OpResult, inputs_b: Sequence[np.ndarray], side_a: Any,
              side_b: Any, keep_arrays: bool = True) -> Attribution:
    """Split the difference at one op (see the module docstring). `inputs_b` are the values B fed
    the op (B's results of `res_b.inputs`); `side_a` and `side_b` the Engines that produced
    `res_a` and `res_b` (B's for its KV cache of earlier passes, part of B's attention input)."""
    if res_a.name != res_b.name or res_a.value.shape != res_b.value.shape:
        raise ModelMismatchError(f"attribution: A's op {res_a.name} {list(res_a.value.shape)} does not "
                                 f"line up with B's {res_b.name} {list(res_b.value.shape)}")
    fa_xa = np.asarray(res_a.value, dtype=np.float64)
    fb_xb = np.asarray(res_b.value, dtype=np.float64)
    fa_xb = np.asarray(recompute(res_a, inputs_b, side_a, kv=side_b), dtype=np.float64)
    local, inherited, total = fa_xb - fb_xb, fa_xa - fa_xb, fa_xa - fb_xb
    ref = _norm(fb_xb.reshape(-1))
    return Attribution(
        name=res_a.name, kind=res_a.kind, layer=res_a.layer, step=res_a.step, weight=res_a.weight,
        weight_type_a=res_a.weight_type, weight_type_b=res_b.weight_type,
        local_rel=_rel(local, ref), inherited_rel=_rel(inherited, ref), total_rel=_rel(total, ref),
        local=local if keep_arrays else None, inherited=inherited if keep_arrays else None,
        total=total if keep_arrays else None)


def _inputs(res: OpResult, env: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return [env[n] for n in res.inputs]


def attribute_run(engine_a: Any, engine_b: Any, tokens: Sequence[int], decode: int = 0,
                  keep_arrays: bool = False) -> Iterator[Attribution]:
    """Run `tokens` through both engines in lockstep (from their current state, split into
    micro-batches as `Engine.logits` does, the last `decode` tokens one at a time) and yield each
    op's Attribution. Arrays are dropped unless `keep_arrays` (the logits' are large)."""
    toks = [int(t) for t in tokens]
    if not 0 <= decode <= len(toks):
        raise QdbgError(f"decode {decode} is more than the {len(toks)} tokens given")
    cut = len(toks) - decode
    passes = (engine_a.ubatches(toks[:cut]) if cut else []) + [[t] for t in toks[cut:]]
    for chunk in passes:
        env_b: dict[str, np.ndarray] = {}  # B's results of this pass, by op name
        for ra, rb in zip(engine_a.forward(chunk), engine_b.forward(chunk)):
            att = attribute(ra, rb, _inputs(rb, env_b), engine_a, engine_b, keep_arrays)
            env_b[rb.name] = rb.value
            if rb.name.startswith("l_out-"):  # later layers read only this of the layer
                for k in [k for k in env_b if k.endswith(f"-{rb.layer}") and k != rb.name]:
                    del env_b[k]
            yield att
