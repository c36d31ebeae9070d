"""qdbg.engine.lockstep: sides run concurrently in threads of their own (Runner); results and errors
are those of sequential stepping."""

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


def test_sides_run_at_the_same_time_each_in_its_own_thread():
    barrier = threading.Barrier(2, timeout=30)  # both sides must be inside their op together
    seen = {}

    def side(label):
        for i in range(3):
            barrier.wait()
            seen.setdefault(label, set()).add(threading.get_ident())
            yield (label, i)

    runners = {lab: lockstep.Runner(side(lab), lab) for lab in "AB"}
    for i in range(3):
        assert {lab: r.get() for lab, r in runners.items()} == {"A": ("A", i), "B": ("B", i)}
    assert {lab: r.get() for lab, r in runners.items()} == {"A": None, "B": None}
    assert runners["A"].get() is None   # the end stays the end
    assert seen["A"].isdisjoint(seen["B"]) and threading.get_ident() not in seen["A"] | seen["B"]


def test_a_runner_stays_within_its_bound_and_on_result_sees_each_result():
    made, seen = [], []

    def side():
        for i in range(100):
            made.append(i)
            yield i

    r = lockstep.Runner(side(), "A", on_result=seen.append, ahead=4)
    assert r.get() == 0
    threading.Event().wait(0.3)
    assert len(made) <= 1 + 4 + 1   # the one taken, a full queue, one waiting to be queued
    assert [r.get() for _ in range(99)] == list(range(1, 100)) and r.get() is None
    assert seen == list(range(100))


def test_error_of_a_side_is_raised_by_get_and_close_stops_a_runner_ahead():
    def bad():
        yield 1
        raise ValueError("side B failed")

    r = lockstep.Runner(bad(), "B")
    assert r.get() == 1
    for _ in range(2):
        with pytest.raises(ValueError, match="side B failed"):
            r.get()

    def endless():
        i = 0
        while True:
            i += 1
            yield i

    ahead = lockstep.Runner(endless(), "A", ahead=2)
    assert ahead.get() == 1
    ahead.close()
    ahead._thread.join(timeout=5)
    assert not ahead._thread.is_alive()


def test_threads_setting():
    lockstep.set_threads(1)
    assert lockstep.threads() == 1
    with pytest.raises(ValueError):
        lockstep.set_threads(0)
    lockstep.set_threads(None)
    assert lockstep.threads() >= 1


def test_concurrent_engines_give_the_sequential_bits(tmp_path):
    spec = SynthSpec(arch="llama", n_embd=256, n_ff=512, n_layer=2, n_vocab=512, seed=3)
    paths = [write_gguf(spec, tmp_path / f"{ft}.gguf", ft) for ft in ("Q4_K_M", "Q8_0", "F16")]
    toks = [1, 5, 9, 200, 7]

    seq = [{lab: res.value for lab, res in zip("ABR", rs)}
           for rs in zip(*(Engine(Model(p)).forward(toks) for p in paths))]
    runners = {lab: lockstep.Runner(Engine(Model(p)).forward(toks), lab) for lab, p in zip("ABR", paths)}
    par = []
    while (r := {lab: run.get() for lab, run in runners.items()})["A"] is not None:
        par.append({lab: res.value for lab, res in r.items()})
    assert len(seq) == len(par) > 20
    for s, p in zip(seq, par):
        for lab in "ABR":
            assert np.array_equal(s[lab].view(np.uint32), p[lab].view(np.uint32))
