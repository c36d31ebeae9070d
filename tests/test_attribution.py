"""qdbg.attribution: local + inherited = total at every op kind, and f_A(x) recomputed is the op.

Synthetic pairs (A Q4_K_M vs B Q8_0) of every architecture, in exact mode, with and without flash
attention, a prompt split into micro-batches and a decode step, so every op kind (embed, scale,
norm, matmul, rope, scores, softmax, attn, residual, act, logits) and the KV-cache paths are hit.
"""

from __future__ import annotations

import numpy as np
import pytest

from qdbg.attribution import attribute, attribute_run, recompute
from qdbg.engine.forward import Engine
from qdbg.errors import ModelMismatchError
from qdbg.model import Model
from qdbg.numerics import RunSettings

SMALL = dict(n_ff=256, n_vocab=512, n_layer=2)
TOKENS = [1, 17, 230, 45, 99, 7, 301]
ALL_KINDS = {"embed", "norm", "matmul", "rope", "scores", "softmax", "attn", "residual", "act", "logits"}


def _engines(synth_model, arch: str, flash: bool) -> tuple[Engine, Engine]:
    settings = RunSettings(n_ubatch=4, flash_attn=flash)
    a = Model(synth_model(arch, "Q4_K_M", **SMALL))
    b = Model(synth_model(arch, "Q8_0", **SMALL))
    return Engine(a, "exact", settings=settings), Engine(b, "exact", settings=settings)


def _walk(ea: Engine, eb: Engine, tokens: list[int], decode: int):
    """Like attribute_run, but also checks recompute(x_A) against A's own op bit for bit."""
    cut = len(tokens) - decode
    passes = ea.ubatches(tokens[:cut]) + [[t] for t in tokens[cut:]]
    for chunk in passes:
        env_a: dict = {}
        env_b: dict = {}
        for ra, rb in zip(ea.forward(chunk), eb.forward(chunk)):
            again = recompute(ra, [env_a[n] for n in ra.inputs], ea)
            assert np.array_equal(again.view(np.uint32), ra.value.view(np.uint32)), ra.name
            yield ra, rb, attribute(ra, rb, [env_b[n] for n in rb.inputs], ea, eb)
            env_a[ra.name], env_b[rb.name] = ra.value, rb.value


@pytest.mark.parametrize("arch, flash", [("llama", False), ("qwen2", False), ("qwen3", True),
                                         ("gemma3", False), ("gemma3", True)])
def test_local_plus_inherited_is_total(synth_model, arch: str, flash: bool) -> None:
    ea, eb = _engines(synth_model, arch, flash)
    kinds = set()
    for ra, rb, att in _walk(ea, eb, TOKENS, decode=2):
        kinds.add(ra.kind)
        total = ra.value.astype(np.float64) - rb.value.astype(np.float64)
        assert np.array_equal(att.total, total)
        # float32 rounding of the total: |local + inherited - total| within 1 ulp of the operands
        scale = np.maximum(np.abs(ra.value), np.abs(rb.value)).astype(np.float64)
        assert np.all(np.abs(att.local + att.inherited - total) <= scale * 2.0 ** -24), ra.name
        if ra.kind == "embed":
            assert np.array_equal(att.local, total) and not att.inherited.any()
        elif ra.weight is None or ra.kind == "norm":
            # weightless arithmetic (and F32 norm weights, equal on both sides) adds nothing itself
            assert att.local_rel == 0.0, ra.name
        else:  # a quantized weight that differs between Q4_K_M and Q8_0 adds error of its own
            assert ra.weight_type != rb.weight_type and att.local_rel > 1e-3, ra.name
        if att.total_rel > 0:
            assert att.local_rel + att.inherited_rel >= att.total_rel * (1 - 1e-9)  # triangle
    expect = ALL_KINDS | ({"scale"} if arch == "gemma3" else set())
    if flash:
        expect -= {"scores", "softmax"}
    assert kinds == expect


def test_attribute_run_matches_the_pure_function(synth_model) -> None:
    ea, eb = _engines(synth_model, "llama", False)
    ref = [att.to_json() for _, _, att in _walk(ea, eb, TOKENS, decode=1)]
    ea.reset()
    eb.reset()
    got = [att.to_json() for att in attribute_run(ea, eb, TOKENS, decode=1)]
    assert got == ref
    # the local error of the first ffn_down is what Q4_K_M's weights add against Q8_0's
    down = next(r for r in got if r["op"] == "ffn_out-0" and r["step"] == 0)
    assert down["weight"] == "blk.0.ffn_down.weight" and down["type_a"] != down["type_b"]
    assert 0 < down["local"] < 1 and down["inherited"] > 0


def test_same_model_has_no_difference(synth_model) -> None:
    m = Model(synth_model("qwen3", "Q4_K_M", **SMALL))
    atts = list(attribute_run(Engine(m, "exact"), Engine(m, "exact"), TOKENS[:3]))
    assert atts and all(a.local_rel == a.inherited_rel == a.total_rel == 0.0 for a in atts)


def test_mismatched_ops_are_refused(synth_model) -> None:
    ea, eb = _engines(synth_model, "llama", False)
    ga, gb = ea.forward([1, 2]), eb.forward([1, 2])
    ra, _ = next(ga), next(gb)
    rb2 = next(gb)
    with pytest.raises(ModelMismatchError, match="does not line up"):
        attribute(ra, rb2, [], ea, eb)
