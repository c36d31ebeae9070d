"""Traces: save/load round trip, tensor budget, replay through the Session verbs, corrupt files."""

from __future__ import annotations

import io
import json
import math
import os
import zipfile

import numpy as np
import pytest

import qdbg.trace as qtrace
from qdbg.errors import TraceError, UsageError
from qdbg.model import Model
from qdbg.session import open_session
from qdbg.trace import ReplaySession, dumps, load_trace, loads, open_replay, save_trace

TOKENS = [1, 17, 42, 99, 300, 7]
BP = "rel_rms > 0.3"


def _stops(s, verb, n=50):
    """Call verb until the end; (reason, index, breakpoint ids) of every non-end stop."""
    out = []
    for _ in range(n):
        st = verb(s)
        if st.reason == "end":
            break
        out.append((st.reason, st.record.index, [b.id for b in st.breakpoints]))
    return out


def _session(paths):
    s = open_session(paths, TOKENS)
    s.breakpoints.add(BP)
    return s


@pytest.fixture(scope="module")
def live(synth_model, tmp_path_factory):
    """A three-sided session run with a breakpoint through the prompt and one decoded token,
    with the stops it made on the way; saved once with the default budget."""
    paths = {"A": str(synth_model("llama", "Q4_K_M")), "B": str(synth_model("llama", "Q5_K_M")),
             "R": str(synth_model("llama", "F16"))}
    s = _session(paths)
    stops = _stops(s, lambda x: x.cont())
    s.decode(1, "a")
    stops += _stops(s, lambda x: x.cont())
    s.back()
    s.back()
    path = tmp_path_factory.mktemp("trace") / "live.qtrace"
    save_trace(s, path, prompt_text="hello")
    return s, stops, path, paths


def _same_metrics(r1, r2):
    for f in ("index", "name", "kind", "layer", "step", "positions", "axes", "inputs", "weight",
              "weight_types", "ggml_name"):
        assert getattr(r1, f) == getattr(r2, f), f
    assert dumps([r1.stats, r1.pairs, r1.logits]) == dumps([r2.stats, r2.pairs, r2.logits])


def test_round_trip(live):
    s, _, path, _ = live
    tr = load_trace(path)
    assert tr.labels == ["A", "B", "R"] and tr.prompt == TOKENS and tr.tokens == s.tokens
    assert tr.prompt_text == "hello" and tr.mode == s.mode and tr.scope == s.scope and tr.top_k == s.top_k
    assert tr.cursor == s.cursor == len(s.history) - 3
    assert tr.breakpoints == s.breakpoints.to_json()
    assert len(tr.records) == len(s.history)
    for r1, r2 in zip(s.history, tr.records):
        _same_metrics(r1, r2)
        for lab in s.labels:
            np.testing.assert_array_equal(r2.values[lab], r1.values[lab])
    m = Model(s.models["B"].path)
    info = tr.models["B"]
    assert info.sha256 == m.sha256() and info.size == os.path.getsize(m.path)
    assert info.tensor_types == m.tensor_types() and info.config == m.config
    assert info.type_summary() == m.type_summary()
    assert tr.tensors["policy"] == "full" and tr.tensors["saved_bytes"] == tr.tensors["total_bytes"]
    assert tr.pieces[TOKENS[1]] == s.pieces(TOKENS[1])


def test_readable_with_numpy_and_json(live):
    s, _, path, _ = live
    with np.load(path, allow_pickle=False) as z:
        m = json.loads(z["manifest"].tobytes(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
        assert m["format"] == "qdbg-trace" and m["version"] == 2 and len(z.files) == 1 + m["n_tensors"]
        rec = m["records"][5]
        t = rec["tensors"]["A"]
        np.testing.assert_array_equal(z[t["entry"]], s.history[5].values["A"])


def test_nonfinite_metrics_round_trip(live, tmp_path):
    s, _, _, _ = live
    rec = s.history[3]
    saved = rec.pairs
    rec.pairs = {k: dict(v) for k, v in saved.items()}
    try:
        rec.pairs["A~B"].update(rel_rms=math.nan, sqnr=math.inf, cos=-math.inf)
        p = save_trace(s, tmp_path / "nf.qtrace", tensor_budget_bytes=0)
    finally:
        rec.pairs = saved
    got = load_trace(p).records[3].pairs["A~B"]
    assert math.isnan(got["rel_rms"]) and got["sqnr"] == math.inf and got["cos"] == -math.inf
    assert loads(dumps({"x": [math.nan, -math.inf, "inf"]}))["x"][2] == "inf"


def test_budget_keeps_selected_position(live, tmp_path):
    s, _, _, _ = live
    total = sum(v.nbytes for r in s.history for v in {**r.values, **r.aux}.values())
    sliced = sum(v.nbytes // len(r.positions) for r in s.history for v in {**r.values, **r.aux}.values())
    p = save_trace(s, tmp_path / "pos.qtrace", tensor_budget_bytes=sliced)
    tr = load_trace(p)
    assert tr.tensors["policy"] == "position" and tr.tensors["saved_bytes"] == sliced < total
    for r1, r2 in zip(s.history, tr.records):
        assert tr.tensor_positions[r2.index] == (r1.positions[-1],)
        ax = r1.axes.index("token")
        for lab in s.labels:
            np.testing.assert_array_equal(r2.values[lab], np.take(r1.values[lab], [-1], axis=ax))
    # a tighter budget keeps the ops nearest the cursor; zero keeps none
    p = save_trace(s, tmp_path / "part.qtrace", tensor_budget_bytes=20_000)
    tr = load_trace(p)
    kept = sorted(tr.tensor_positions)
    assert tr.tensors["policy"] == "partial" and 0 < len(kept) < len(tr.records)
    assert tr.tensors["saved_bytes"] <= 20_000 and s.cursor in kept
    tr = load_trace(save_trace(s, tmp_path / "none.qtrace", tensor_budget_bytes=0))
    assert tr.tensors["policy"] == "none" and not tr.tensor_positions
    assert all(not r.values for r in tr.records)
    with pytest.raises(UsageError):
        save_trace(s, tmp_path / "bad.qtrace", tensor_budget_bytes=-1)


def test_replay_gives_the_same_stops(live):
    s, stops, path, paths = live
    r = open_replay(path)
    assert r.cursor == s.cursor and len(r.history) == len(s.history) and not r.at_end
    _same_metrics(r.current, s.current)
    assert r.final() == s.final()
    r.restart()
    assert r.current is None and r.tokens == TOKENS
    assert _stops(r, lambda x: x.cont()) == stops
    assert r.at_end and r.tokens == s.tokens
    # the same verbs from the start on both sides (a fresh live session)
    r.restart()
    s = _session(paths)
    for verb in (lambda x: x.step(), lambda x: x.step(), lambda x: x.back(), lambda x: x.next_layer(),
                 lambda x: x.run_to("ffn_up-1"), lambda x: x.run_to(1), lambda x: x.run_to("result_*")):
        a, b = verb(s), verb(r)
        assert (a.reason, a.record.index) == (b.reason, b.record.index)
        assert s.variables(a.record) == r.variables(b.record)
    assert r.run_to_end().reason == "end" and r.current.step == 1
    with pytest.raises(UsageError, match="cannot decode"):
        r.decode(1)
    with pytest.raises(UsageError):
        r.models["A"].tokenizer


def test_replay_set_scope(live, tmp_path):
    _, _, path, paths = live
    r = open_replay(path)
    r.set_scope("all")  # full tensors: recomputed like the live session would
    s = _session(paths)
    s.run_to_end()
    s.set_scope("all")
    for r1, r2 in zip(s.history, r.history):
        _same_metrics(r1, r2)
    s.set_scope("last")
    r.set_scope("last")
    _same_metrics(r.history[36], load_trace(path).records[36])
    r.set_scope(2)
    assert r.history[3].stats["A"]["shape"][0] == 1
    rp = ReplaySession.from_trace(load_trace(save_trace(s, tmp_path / "p.qtrace", tensor_budget_bytes=50_000)))
    with pytest.raises(UsageError, match="scope"):
        rp.set_scope("all")
    rp.set_scope("last")


def test_atomic_save_keeps_previous(live, tmp_path, monkeypatch):
    s, _, _, _ = live
    p = save_trace(s, tmp_path / "t.qtrace", tensor_budget_bytes=0)
    before = p.read_bytes()
    calls = []

    def failing(z, name, arr, compress):
        calls.append(name)
        if len(calls) > 3:
            raise OSError("disk full")
        real(z, name, arr, compress)

    real = qtrace._put
    monkeypatch.setattr(qtrace, "_put", failing)
    with pytest.raises(OSError, match="disk full"):
        save_trace(s, p)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["t.qtrace"]
    load_trace(p)


# ---- corrupt files ---------------------------------------------------------------------------

def _entries(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _rezip(path, out, entries, compress=None, comment=b"qdbg-trace 2"):
    with zipfile.ZipFile(out, "w") as z:
        z.comment = comment
        for name, data in entries.items():
            c = compress.get(name, zipfile.ZIP_STORED) if compress else (
                zipfile.ZIP_DEFLATED if name == "manifest.npy" else zipfile.ZIP_STORED)
            z.writestr(zipfile.ZipInfo(name), data, compress_type=c)
    return out


def _npy(arr):
    b = io.BytesIO()
    np.lib.format.write_array(b, arr, allow_pickle=True)
    return b.getvalue()


def _with_manifest(path, out, edit):
    ents = _entries(path)
    m = loads(np.load(io.BytesIO(ents["manifest.npy"])).tobytes())
    edit(m)
    ents["manifest.npy"] = _npy(np.frombuffer(dumps(m) if not isinstance(m, bytes) else m, np.uint8))
    return _rezip(path, out, ents)


@pytest.fixture(scope="module")
def small(live, tmp_path_factory):
    """A small trace (A and B, a dozen ops, some tensors dropped) for the corruption tests."""
    paths = {k: v for k, v in live[3].items() if k != "R"}
    s = open_session(paths, TOKENS[:3], top_k=3)
    s.run_to("ffn_norm-0")
    s.back()
    return save_trace(s, tmp_path_factory.mktemp("small") / "s.qtrace", tensor_budget_bytes=8_000)


def _load_or_same(path, ref):
    """Load `path`: a TraceError, or a trace identical to `ref` (flips in zip metadata are harmless)."""
    try:
        tr = load_trace(path)
    except TraceError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return False
    assert len(tr.records) == len(ref.records)
    for r1, r2 in zip(ref.records, tr.records):
        _same_metrics(r1, r2)
        assert r1.values.keys() == r2.values.keys()
        for lab in r1.values:
            np.testing.assert_array_equal(r1.values[lab], r2.values[lab])
    return True


def test_truncated_files_are_rejected(small, tmp_path):
    data = small.read_bytes()
    bad = tmp_path / "t.qtrace"
    for cut in sorted({0, 1, 4, 30, 100, *range(0, len(data), max(1, len(data) // 60)), len(data) - 1,
                       len(data) - 22, len(data) - 23}):
        bad.write_bytes(data[:cut])
        with pytest.raises(TraceError):
            load_trace(bad)


def test_flipped_bytes_are_rejected_or_harmless(small, tmp_path):
    ref = load_trace(small)
    data = small.read_bytes()
    bad = tmp_path / "f.qtrace"
    rng = np.random.default_rng(0)
    positions = sorted({*rng.integers(0, len(data), 50).tolist(), *range(0, 30), *range(len(data) - 70, len(data))})
    rejected = 0
    for i in positions:
        b = bytearray(data)
        b[i] ^= 0x5A
        bad.write_bytes(bytes(b))
        rejected += not _load_or_same(bad, ref)
    assert rejected > len(positions) // 2


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(version=3), "version"),
    (lambda m: m.update(format="other"), "format"),
    (lambda m: m.pop("records"), "records"),
    (lambda m: m.update(cursor="x"), "cursor"),
    (lambda m: m.update(cursor=math.nan), "cursor"),
    (lambda m: m.update(cursor=10**6), "cursor"),
    (lambda m: m.update(n_records=3), "n_records"),
    (lambda m: m.update(n_tensors=1), "n_tensors"),
    (lambda m: m.update(tokens=[10**9]), "tokens"),
    (lambda m: m.update(labels=["B", "A"]), "labels"),
    (lambda m: m["models"]["A"].update(sha256="zz"), "sha256"),
    (lambda m: m["models"]["A"]["config"].update(n_layer=-1), "n_layer"),
    (lambda m: m["models"]["A"]["config"].pop("n_embd"), "n_embd"),
    (lambda m: m["records"][0].update(index=5), "index"),
    (lambda m: m["records"][0].update(positions=[99]), "positions"),
    (lambda m: m["records"][0]["pairs"]["A~B"].update(rel_rms="big"), "rel_rms"),
    (lambda m: m["records"][0]["stats"]["A"].update(nan_count=math.inf), "nan_count"),
    (lambda m: m["records"][0]["pairs"].update(X=1), "pair"),
    (lambda m: m["breakpoints"].update(breakpoints=[{"id": 1}]), "breakpoints"),
    (lambda m: m["tensors"].update(policy="some"), "policy"),
    (lambda m: m["records"][m["cursor"]]["tensors"]["A"].update(shape=[1, 2**40]), "A/"),
    (lambda m: m["records"][m["cursor"]]["tensors"]["A"].update(dtype="|O"), "dtype"),
    (lambda m: m["records"][m["cursor"]]["tensors"]["A"].update(entry="A/9/nothing"), "nothing"),
])
def test_bad_manifests_are_rejected(small, tmp_path, edit, match):
    with pytest.raises(TraceError, match=match):
        load_trace(_with_manifest(small, tmp_path / "m.qtrace", edit))


def test_bad_entries_are_rejected(small, tmp_path):
    ents = _entries(small)
    name = next(n for n in ents if n != "manifest.npy")

    def check(out_ents, match, compress=None):
        with pytest.raises(TraceError, match=match):
            load_trace(_rezip(small, tmp_path / "e.qtrace", out_ents, compress))

    check({k: v for k, v in ents.items() if k != name}, "missing entry")
    check({**ents, "extra.npy": _npy(np.zeros(3, np.float32))}, "extra")
    check({**ents, name: _npy(np.zeros(3, np.float32))}, "header")
    check({**ents, name: _npy(np.array([None] * 3, dtype=object))}, "header")
    check({**ents, name: ents[name][:-4]}, "bytes")
    check(ents, "compressed", {name: zipfile.ZIP_DEFLATED})
    check({k: v for k, v in ents.items() if k != "manifest.npy"}, "no manifest")
    with pytest.raises(TraceError, match="version '3'"):
        load_trace(_rezip(small, tmp_path / "v.qtrace", ents, comment=b"qdbg-trace 3"))
    with pytest.raises(TraceError, match="zip comment says version 1, the manifest 2"):
        load_trace(_rezip(small, tmp_path / "v.qtrace", ents, comment=b"qdbg-trace 1"))
    check({**ents, "manifest.npy": _npy(np.frombuffer(b"{not json", np.uint8))}, "JSON")
    check({**ents, "manifest.npy": _npy(np.frombuffer(b'{"a": NaN}', np.uint8))}, "JSON")
    check({**ents, "manifest.npy": _npy(np.frombuffer(b'{"a": 1, "a": 2}', np.uint8))}, "duplicate")
    check({**ents, "manifest.npy": _npy(np.frombuffer(b"[1]", np.uint8))}, "object")
    check({**ents, "manifest.npy": _npy(np.frombuffer(b"\xff\xfe", np.uint8))}, "UTF-8")
    check({**ents, "manifest.npy": _npy(np.zeros(4, np.float32))}, "uint8")
    # a zip bomb: 64 MB of zeros deflate to ~64 kB
    check({**ents, "manifest.npy": _npy(np.zeros(64 << 20, np.uint8))}, "implausible")


def test_claimed_size_in_directory_is_checked(small, tmp_path):
    data = bytearray(small.read_bytes())
    i = data.find(b"PK\x01\x02")  # first central directory header: the manifest
    assert data[i + 46:i + 46 + 12] == b"manifest.npy"
    data[i + 24:i + 28] = (0x7FFFFFF0).to_bytes(4, "little")  # uncompressed size
    bad = tmp_path / "c.qtrace"
    bad.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="implausible|claims"):
        load_trace(bad)


def test_not_a_trace(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text").write_text("hello, not a zip\n" * 10)
    (tmp_path / "dir").mkdir()
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    for name, match in (("empty", "empty"), ("text", "not a zip"), ("dir", "directory"),
                        ("missing", "cannot read"), ("other.npz", "not a qdbg trace")):
        with pytest.raises(TraceError, match=match):
            load_trace(tmp_path / name)


def test_parse_size():
    from qdbg.trace import parse_size

    assert [parse_size(x) for x in ("0", "1000", "512k", "64M", "1.5G", "2MiB")] == \
        [0, 1000, 512 << 10, 64 << 20, 3 << 29, 2 << 20]
    for bad in ("", "-1", "x", "nanM", "1e30G"):
        with pytest.raises(UsageError):
            parse_size(bad)


def _as_version_1(m):
    """What qdbg wrote before version 2: no interventions, no `every`, no attribution fields."""
    m["version"] = 1
    m.pop("interventions")
    for bp in m["breakpoints"]["breakpoints"]:
        bp.pop("every")
    for r in m["records"]:
        r.pop("interventions")
        for pm in r["pairs"].values():
            for k in ("centred", "local", "inherited", "noise"):
                pm.pop(k)


def test_version_1_traces_still_load(small, tmp_path):
    ents = _entries(small)
    m = loads(np.load(io.BytesIO(ents["manifest.npy"])).tobytes())
    _as_version_1(m)
    ents["manifest.npy"] = _npy(np.frombuffer(dumps(m), np.uint8))
    old = load_trace(_rezip(small, tmp_path / "v1.qtrace", ents, comment=b"qdbg-trace 1"))
    new = load_trace(small)
    assert old.version == 1 and old.interventions == [] and len(old.records) == len(new.records)
    for r1, r2 in zip(old.records, new.records):
        assert r1.pair.rel_rms == r2.pair.rel_rms and r1.pair.local is None and r1.interventions == []
    rs = ReplaySession(old)
    assert rs.cursor == new.cursor and rs.current.name == new.records[new.cursor].name
