"""Exact mode on a weight type it has no kernel for: the tensor runs approximately, and says so once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import qdbg.synth as synth
from qdbg.cli import main
from qdbg.engine.forward import Engine
from qdbg.model import Model
from qdbg.numerics.exact import ApproximateWarning, coverage

ODD = "blk.0.ffn_down.weight"


@pytest.fixture()
def iq4_model(tmp_path, monkeypatch):
    """A synthetic llama whose blk.0.ffn_down.weight is IQ4_NL (valid blocks: f16 scale + 16 nibbles)."""
    plan, quant = synth.plan_types, synth.quantize_rows

    def plan_types(spec, ftype):
        types = plan(spec, ftype)
        types[ODD] = QT.IQ4_NL
        return types

    def quantize_rows(rows, qtype, name=""):
        if qtype != QT.IQ4_NL:
            return quant(rows, qtype, name)
        rng = np.random.default_rng(7)
        blocks = rng.integers(0, 256, size=(rows.shape[0], rows.shape[1] // 32, 18), dtype=np.uint8)
        blocks[..., :2] = np.array([0.01], np.float16).view(np.uint8)
        return blocks.reshape(rows.shape[0], -1)

    monkeypatch.setattr(synth, "plan_types", plan_types)
    monkeypatch.setattr(synth, "quantize_rows", quantize_rows)
    return synth.write_gguf(synth.SynthSpec(arch="llama"), tmp_path / "iq4.gguf", "Q8_0")


def test_tensor_without_kernel_runs_approximately_and_is_named(iq4_model):
    m = Model(iq4_model)
    assert m.tensors[ODD].qtype == QT.IQ4_NL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eng = Engine(m, "exact")
        logits = eng.logits([1, 5, 9])
        eng.logits([11])  # a second pass does not warn again
    msgs = [str(w.message) for w in caught if issubclass(w.category, ApproximateWarning)]
    assert msgs == [f"{ODD}: no exact kernel for IQ4_NL; this tensor runs in approximate (ggml) arithmetic"]
    assert np.isfinite(logits).all()
    cov = coverage({n: (t.qtype, tuple(t.shape)) for n, t in m.tensors.items()})
    assert cov["approximate"] == [f"{ODD} (IQ4_NL)"]


def test_cli_warns_in_one_line_and_inspect_lists_it(iq4_model, capsys):
    assert main(["logits", str(iq4_model), "--tokens", "1,5,9", "--top-k", "1"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"qdbg: warning: {ODD}: no exact kernel for IQ4_NL; this tensor runs in approximate "
                   f"(ggml) arithmetic"]
    assert main(["inspect", str(iq4_model), "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["exact_mode"]["approximate"] == [f"{ODD} (IQ4_NL)"]
    assert doc["exact_mode"]["profile"]["id"] == "llama.cpp-0.3.36-x86_64-avx2"
