"""The op catalogue names exactly the ops the engine yields, for every architecture."""

from __future__ import annotations

import pytest

from qdbg.catalogue import Catalogue, pass_ops
from qdbg.engine.forward import Engine
from qdbg.errors import UsageError
from qdbg.model import Model
from qdbg.numerics import RunSettings


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
@pytest.mark.parametrize("flash", [False, True])
def test_catalogue_matches_engine(synth_model, arch, flash):
    m = Model(synth_model(arch, "Q8_0"))
    eng = Engine(m, "exact" if flash else "f32", settings=RunSettings(flash_attn=flash))
    got = [(r.name, r.kind, r.layer, r.weight) for r in eng.forward([1, 2])]
    want = [(o.name, o.kind, o.layer, o.weight) for o in pass_ops(m.config, flash)]
    assert got == want


def test_targets_by_name_glob_tensor_and_kind(synth_model):
    cat = Catalogue(pass_ops(Model(synth_model("llama", "Q8_0")).config, False))
    assert cat.check_target("blk.1.ffn_down.weight") == ["ffn_out-1"]
    assert cat.check_target("ffn_up-*")[:2] == ["ffn_up-0", "ffn_up-1"]
    with pytest.raises(UsageError, match="no op or tensor matches 'ffn_upp-1'"):
        cat.check_target("ffn_upp-1")
    cat.check_kind("matmul")
    with pytest.raises(UsageError, match="kinds are"):
        cat.check_kind("matmull")
