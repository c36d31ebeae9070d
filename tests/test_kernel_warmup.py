"""qdbg.numerics.kernels.warmup: kernels prepared up front, in the order a model needs them, with progress."""

from __future__ import annotations

from gguf import GGMLQuantizationType as QT

from qdbg.numerics.kernels import warmup


def test_plan_puts_the_models_matmul_types_first_and_skips_unused_ones():
    assert warmup.plan([QT.Q4_K, QT.Q6_K, QT.F32]) == ["kquant", "float", "rope", "attention", "glu"]
    assert warmup.plan([QT.Q8_0]) == ["legacy", "rope", "attention", "glu"]
    assert warmup.plan(None)[:3] == ["kquant", "legacy", "float"]


def test_warm_reports_each_family_and_prepares_it_once(monkeypatch, tmp_path):
    monkeypatch.setattr(warmup, "_marker", lambda fam: tmp_path / fam)
    calls = []
    fams = {"a": ("family A", lambda: calls.append("a")), "b": ("family B", lambda: calls.append("b"))}
    monkeypatch.setattr(warmup, "FAMILIES", fams)
    monkeypatch.setattr(warmup, "_done", set())
    seen = []
    assert warmup.warm(["a", "b"], progress=lambda what, done, total: seen.append((what, done, total))) == ["a", "b"]
    assert calls == ["a", "b"]
    assert [s[1:] for s in seen] == [(0, 2), (1, 2), (2, 2)]
    assert "family A" in seen[0][0] and "family B" in seen[1][0]
    assert warmup.is_compiled("a") and warmup.is_compiled("b")
    assert "compiling" in seen[0][0]                # no marker yet: a first run
    monkeypatch.setattr(warmup, "_done", set())
    seen.clear()
    warmup.warm(["a"], progress=lambda what, done, total: seen.append(what))
    assert "loading" in seen[0]                      # marker written: the cache has it
    assert warmup.warm(["a", "b"]) == ["b"] and calls == ["a", "b", "a", "b"]
    assert warmup.warm(["a", "b"]) == [] and len(calls) == 4


def test_background_warmup_prepares_the_real_kernels():
    t = warmup.warm_in_background(["glu", "rope"])
    t.join(timeout=600)
    assert not t.is_alive()
    assert {"glu", "rope"} <= warmup._done
