"""qdbg.engine.lockstep: sides advance concurrently, results and errors are those of sequential stepping."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from qdbg.engine import lockstep
from qdbg.engine.forward import Engine
from qdbg.model import Model
from qdbg.synth import SynthSpec, write_gguf


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    lockstep.set_threads(None)


def test_sides_run_at_the_same_time():
    lockstep.set_threads(2)
    barrier = threading.Barrier(2, timeout=30)  # both sides must be inside their op together
    seen = {}

    def side(label):
        for i in range(3):
            barrier.wait()
            seen.setdefault(label, set()).add(threading.get_ident())
            yield (label, i)

    gens = {"A": side("A"), "B": side("B")}
    for i in range(3):
        assert lockstep.advance_all(gens) == {"A": ("A", i), "B": ("B", i)}
    assert lockstep.advance_all(gens) == {"A": None, "B": None}
    assert seen["A"].isdisjoint(seen["B"])


def test_sequential_when_capped_to_one():
    lockstep.set_threads(1)
    me = threading.get_ident()

    def side():
        yield threading.get_ident()

    assert lockstep.advance_all({"A": side(), "B": side(), "R": side()}) == {"A": me, "B": me, "R": me}


def test_not_concurrent_when_asked():
    lockstep.set_threads(2)
    me = threading.get_ident()
    order = []

    def side(label):
        order.append(label)
        yield threading.get_ident()

    assert lockstep.advance_all({"B": side("B"), "A": side("A")}, concurrent=False) == {"B": me, "A": me}
    assert order == ["B", "A"]


def test_error_of_a_worker_side_is_raised_after_all_sides_finish():
    lockstep.set_threads(2)
    done = []

    def ok():
        done.append("A")
        yield 1

    def bad():
        raise ValueError("side B failed")
        yield  # pragma: no cover

    with pytest.raises(ValueError, match="side B failed"):
        lockstep.advance_all({"A": ok(), "B": bad()})
    assert done == ["A"]


def test_concurrent_engines_give_the_sequential_bits(tmp_path):
    spec = SynthSpec(arch="llama", n_embd=256, n_ff=512, n_layer=2, n_vocab=512, seed=3)
    paths = [write_gguf(spec, tmp_path / f"{ft}.gguf", ft) for ft in ("Q4_K_M", "Q8_0", "F16")]
    toks = [1, 5, 9, 200, 7]

    def run(n_threads):
        lockstep.set_threads(n_threads)
        gens = {lab: Engine(Model(p)).forward(toks) for lab, p in zip("ABR", paths)}
        out = []
        while (r := lockstep.advance_all(gens))["A"] is not None:
            out.append({lab: res.value for lab, res in r.items()})
        return out

    seq, par = run(1), run(3)
    assert len(seq) == len(par) > 20
    for s, p in zip(seq, par):
        for lab in "ABR":
            assert np.array_equal(s[lab].view(np.uint32), p[lab].view(np.uint32))
