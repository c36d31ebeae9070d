"""Model memory: mapped weight pages are bounded (ResidentPages), embeddings are looked up by row."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from qdbg.engine.forward import Engine
from qdbg.engine.weights import Weight
from qdbg.model import Model, ResidentPages, _is_file_map, _release_pages


def _rss() -> int:
    """This process's resident set in bytes (/proc/self/statm; mapped file pages included)."""
    import mmap

    return int(open("/proc/self/statm").read().split()[1]) * mmap.PAGESIZE


def test_resident_weights_stay_within_budget(synth_model):
    path = synth_model("llama", "Q8_0", n_embd=512, n_ff=1024, n_layer=3)
    m = Model(path, resident_bytes=1 << 20)
    names = [n for n, t in m.tensors.items() if len(t.shape) == 2]
    largest = max(m.tensors[n].n_bytes for n in names)
    for n in names:
        m.weight(n)
        assert m.resident.used <= max(1 << 20, largest)
    assert m.resident.released > 0
    big = Model(path, resident_bytes=1 << 40)
    for n in names:
        big.weight(n)
    assert big.resident.released == 0 and big.resident.used == sum(m.tensors[n].n_bytes for n in names)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release is Linux-only")
def test_released_pages_leave_the_process_and_come_back_unchanged(synth_model):
    path = synth_model("llama", "Q8_0", n_embd=512, n_ff=1024, n_layer=3)
    m = Model(path)
    raw = m.weight("blk.0.ffn_up.weight").raw      # 1024 x 512 Q8_0: 544 KiB
    before = raw.copy()                            # reads every page
    mapped = _rss()
    assert _release_pages(raw)
    assert mapped - _rss() >= raw.nbytes // 2      # its pages left this process
    assert np.array_equal(raw, before)             # and read back the same


def test_only_file_maps_are_released():
    heap = np.arange(1 << 16, dtype=np.uint8)
    assert not _is_file_map(heap)
    r = ResidentPages(0)
    r.touch("a", heap)
    r.touch("b", heap[:10])
    assert r.used == 0 and r.released == 0
    assert np.array_equal(heap, np.arange(1 << 16, dtype=np.uint8))


def test_exact_run_gives_the_same_logits_with_a_tiny_resident_budget(synth_model):
    path = synth_model("llama", "Q4_K_M")
    toks = [1, 7, 42, 3, 99]
    a = Engine(Model(path, resident_bytes=1)).logits(toks)
    b = Engine(Model(path, resident_bytes=1 << 40)).logits(toks)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_embedding_lookup_dequantizes_only_the_rows_it_needs(synth_model):
    m = Model(synth_model("llama", "Q4_K_M"))
    w = m.weight("token_embd.weight")

    def whole_table():
        raise AssertionError("the whole embedding table was dequantized")

    rows = Weight(w.name, w.qtype, raw=w.raw, shape=w.shape, load=whole_table).rows(np.array([5, 2, 5]))
    assert rows.shape == (3, w.shape[1]) and np.array_equal(rows[0], rows[2])
    e = Engine(m)
    e.weight_overrides["token_embd.weight"] = Weight(w.name, w.qtype, raw=w.raw, shape=w.shape, load=whole_table)
    assert e.logits([1, 2, 3]).shape[0] in (1, 3)
    assert all(len(m.tensors[n].shape) == 1 for n in m.cache._items)  # no matrix dequantized
