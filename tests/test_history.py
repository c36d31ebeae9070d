"""Bounded history memory (qdbg.history) and A/B concurrency in the live source: a tiny budget
spills a small synthetic run's values to disk and they read back bit for bit; the memory held stays
under the budget; scope changes and trace saves work from spilled records; the spill folder goes at
close and at exit; concurrent and sequential sides give bit-identical histories."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qdbg.live as live
from qdbg.debugger import Debugger
from qdbg.engine import lockstep
from qdbg.errors import UsageError
from qdbg.history import Arrays, HistoryStore, parse_bytes
from qdbg.live import LiveSource
from qdbg.model import Model
from qdbg.trace import load_trace, save_trace

TOKENS = [1, 40, 41, 300, 12, 7]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(synth_model):
    return {lab: Model(synth_model("llama", ft)) for lab, ft in
            (("A", "Q4_K_M"), ("B", "Q5_K_M"), ("R", "F16"))}


def _run(models, budget: int, **kw) -> Debugger:
    d = Debugger(LiveSource(models, TOKENS, **kw), history_bytes=budget)
    d.run_to_end()
    d.decode(1)
    d.run_to_end()
    return d


def _same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes()


def _same_history(h1, h2) -> None:
    assert len(h1) == len(h2)
    for r1, r2 in zip(h1, h2):
        assert r1.name == r2.name
        for attr in ("values", "aux"):
            m1, m2 = getattr(r1, attr), getattr(r2, attr)
            assert list(m1) == list(m2), (r1.name, attr)
            for k in m1:
                assert _same_bits(m1[k], m2[k]), (r1.name, attr, k)
        assert r1.metrics_json() == r2.metrics_json()


def _resident(history) -> int:
    """Bytes of the values held in memory, counted from the records themselves."""
    return sum(m[k].nbytes for r in history for m in (r.values, r.aux) for k in m if not m.spilled(k))


@pytest.fixture(scope="module")
def full(models):
    return _run(models, 1 << 40)


@pytest.fixture(scope="module")
def spilled(models):
    return _run(models, 64 << 10)


def test_tiny_budget_spills_and_reads_back_bit_identical(full, spilled):
    assert full.store.spilled_bytes == 0 and full.store.folder is None
    n_spilled = sum(r.values.spilled(k) for r in spilled.history for k in r.values)
    assert n_spilled > len(spilled.history)   # most of the sides' values are on disk
    assert spilled.store.spilled_bytes > 10 * spilled.store.budget
    assert os.path.isdir(spilled.store.folder)
    _same_history(full.history, spilled.history)
    v = spilled.history[3].values["A"]
    assert spilled.history[3].values.spilled("A") and not v.flags.writeable


def test_memory_held_stays_under_the_budget(models):
    budget = 96 << 10
    d = Debugger(LiveSource(models, TOKENS), history_bytes=budget)
    biggest = 0
    while d.step().reason != "end":
        rec = d.current
        biggest = max(biggest, rec.values.nbytes + rec.aux.nbytes)
        held = _resident(d.history)
        assert held == d.store.resident
        assert held <= budget
    assert biggest < budget < sum(r.values.nbytes + r.aux.nbytes for r in d.history)


def test_scope_change_remeasures_spilled_records_without_keeping_them(models, full, spilled):
    ref = Debugger(LiveSource(models, TOKENS), history_bytes=1 << 40)
    ref.run_to_end()
    d = Debugger(LiveSource(models, TOKENS), history_bytes=32 << 10)
    d.run_to_end()
    on_disk = {(r.index, k) for r in d.history for k in r.values if r.values.spilled(k)}
    assert on_disk
    for scope in ("all", 2, "last"):
        ref.set_scope(scope)
        d.set_scope(scope)
        for r1, r2 in zip(ref.history, d.history):
            assert r1.metrics_json() == r2.metrics_json(), (scope, r1.name)
    # nothing read back was attached to its record: the same values are still only on disk
    assert {(r.index, k) for r in d.history for k in r.values if r.values.spilled(k)} == on_disk
    assert d.store.resident == _resident(d.history) <= d.store.budget


def test_trace_saves_from_spilled_records(full, spilled, tmp_path):
    paths = []
    for name, d in (("full", full), ("spilled", spilled)):
        p = tmp_path / f"{name}.qtrace"
        save_trace(d, p, tensor_budget_bytes=1 << 40)
        paths.append(p)
    t1, t2 = (load_trace(p) for p in paths)
    assert t1.tensors["policy"] == t2.tensors["policy"] == "full"
    _same_history(t1.records, t2.records)
    assert any(r.values for r in t2.records)


def test_close_removes_the_spill_folder_and_restart_clears(models):
    d = _run(models, 16 << 10)
    folder = d.store.folder
    assert folder and os.path.isdir(folder)
    kept = d.history[5]
    want = np.array(kept.values["B"])
    d.restart()
    assert d.store.resident == 0 and d.store.spilled_bytes == 0 and d.history == []
    assert _same_bits(kept.values["B"], want)   # a record held elsewhere still reads its values
    d.close()
    assert not os.path.exists(folder)
    assert _same_bits(kept.values["B"], want)


def test_spill_folder_removed_at_exit(synth_model, tmp_path):
    code = (
        "import sys\n"
        "from qdbg.session import open_session\n"
        f"s = open_session({{'A': {str(synth_model('llama', 'Q4_K_M'))!r}, "
        f"'B': {str(synth_model('llama', 'Q5_K_M'))!r}}}, {TOKENS!r})\n"
        "s.run_to_end()\n"
        "assert s.store.spilled_bytes > 0\n"
        "print(s.store.folder)\n"
    )
    env = {**os.environ, "QDBG_HISTORY_BYTES": "8K", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    folder = out.stdout.strip().splitlines()[-1]
    assert folder.startswith("/") and "qdbg-history-" in folder
    assert not os.path.exists(folder)


def test_released_views_leave_nothing_mapped(tmp_path):
    st = HistoryStore(0)

    class Rec:
        values: dict
        aux: dict

    r = Rec()
    r.values, r.aux = {"A": np.arange(5000, dtype=np.float32), "B": np.full(3, np.nan)}, {}
    st.adopt(r)
    assert isinstance(r.values, Arrays) and r.values.spilled("A") and r.values.spilled("B")
    assert st.resident == 0
    a = r.values["A"]
    assert _same_bits(a, np.arange(5000, dtype=np.float32)) and np.isnan(r.values["B"]).all()
    tail = a[-10:]
    del a
    gc.collect()
    assert _same_bits(tail, np.arange(4990, 5000, dtype=np.float32))   # a view keeps its pages readable
    r.values["A"] = np.zeros(2)   # a new value is held in memory (and, past the budget, spilled)
    assert r.values.spilled("A") and list(r.values) == ["B", "A"]
    del r.values["A"]
    assert list(r.values) == ["B"] and r.values.nbytes == 24
    st.close()


def test_history_budget_from_env(monkeypatch):
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("512M") == 512 << 20 and parse_bytes("4096") == 4096
    assert parse_bytes("1.5KiB") == 1536
    monkeypatch.setenv("QDBG_HISTORY_BYTES", "3M")
    assert HistoryStore().budget == 3 << 20
    monkeypatch.setenv("QDBG_HISTORY_BYTES", "lots")
    with pytest.raises(UsageError, match="QDBG_HISTORY_BYTES"):
        HistoryStore()


# ---- A/B concurrency -----------------------------------------------------------------------------

@pytest.fixture()
def count_concurrent(monkeypatch):
    """The names of the free-running threads each concurrent pass starts (sides and attribution)."""
    calls = []
    real = lockstep.Runner

    class Counting(real):
        def __init__(self, gen, name, *a, **kw):
            calls.append(name)
            super().__init__(gen, name, *a, **kw)

    monkeypatch.setattr(live.lockstep, "Runner", Counting)
    lockstep.set_threads(2)   # two threads even where the machine shows one core
    yield calls
    lockstep.set_threads(None)


def test_concurrent_and_sequential_sides_give_identical_histories(models, full, count_concurrent):
    conc = _run(models, 1 << 40, concurrent=True)
    n_pass = sum(r.name == "result_output" for r in conc.history)
    assert n_pass == 2 and count_concurrent == ["cross", "A", "B", "R"] * n_pass   # every pass
    seq = _run(models, 1 << 40, concurrent=False)
    _same_history(full.history, seq.history)
    _same_history(seq.history, conc.history)


def test_small_passes_run_in_order_and_resync_stays_sequential(models, count_concurrent):
    assert not LiveSource(models, TOKENS)._concurrent_pass   # a tiny model: a hand-off costs more
    d = Debugger(LiveSource(models, TOKENS, concurrent=True, resyncs=[live.Resync("l_out-*")]))
    d.run_to_end()
    assert count_concurrent == []
    assert any("resync A<-B" in r.interventions for r in d.history)


def test_attribution_runs_alongside_the_sides_with_identical_bits(models, full, count_concurrent, monkeypatch):
    """With the sides concurrent, A's op on B's input (f_A(x_B), for attribution) is computed in a
    thread of its own next to them for every op with a weight; the history is the same bits as
    sequential."""
    got = []
    real = live._CrossRunner.get

    def counting(self):
        r = real(self)
        got.append(r[0])
        return r

    monkeypatch.setattr(live._CrossRunner, "get", counting)
    conc = _run(models, 1 << 40, concurrent=True)
    weighted = [r.name for r in conc.history if r.weight and r.kind != "embed"]
    assert got == weighted
    _same_history(full.history, conc.history)


def test_a_failing_side_raises_in_the_consumer_and_a_reset_stops_the_threads(models, monkeypatch):
    """An error in a free-running side reaches next_op (no hung thread); reset() stops the pass's
    threads (a side that ran ahead included), and the restarted pass gives the same records."""
    from qdbg.engine.forward import Engine

    lockstep.set_threads(2)
    try:
        ref = LiveSource(models, TOKENS, concurrent=False)
        want = [ref.next_op(i).name for i in range(8)]
        real = Engine.forward

        def failing(self, tokens, *a, **kw):
            for i, r in enumerate(real(self, tokens, *a, **kw)):
                if self.model is models["B"] and i == 3:
                    raise RuntimeError("side B failed")
                yield r

        monkeypatch.setattr(Engine, "forward", failing)
        src = LiveSource(models, TOKENS, concurrent=True)
        assert src._runners is not None
        threads = [r._thread for r in src._runners.values()]
        with pytest.raises(RuntimeError, match="side B failed"):
            for i in range(8):
                src.next_op(i)
        monkeypatch.setattr(Engine, "forward", real)
        src.reset()
        for t in threads:
            t.join(timeout=5)
            assert not t.is_alive(), t.name
        assert [src.next_op(i).name for i in range(8)] == want
    finally:
        lockstep.set_threads(None)
