"""Seeded fuzzing of traces: every mutated file loads (and replays) or raises TraceError.

Three families, 360 cases: byte-level damage anywhere in the zip (multi-byte flips, zeroed runs,
truncation), and structural damage to the JSON manifest re-zipped into a well-formed archive
(deleted keys, wrong types, huge or negative numbers, NaN, deep nesting, duplicated records), so
the schema checks are exercised past the zip layer. Allocation stays within a small multiple of
the file size.
"""

from __future__ import annotations

import copy
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from qdbg.errors import TraceError
from qdbg.session import open_session
from qdbg.trace import open_replay, save_trace

SEED = 314159
HOSTILE = [None, True, -1, 2**63, 1e308, float("nan"), "x", [], {}, [[[[[[]]]]]], "A" * 10000]


@pytest.fixture(scope="module")
def trace_file(synth_model, tmp_path_factory):
    s = open_session({"A": str(synth_model("llama", "Q4_K_M")), "B": str(synth_model("llama", "Q5_K_M"))},
                     [1, 7, 9, 11])
    s.breakpoints.add("rel_rms > 0.1")
    s.run_to("ffn_out-0")
    p = tmp_path_factory.mktemp("fz") / "t.qdbg"
    save_trace(s, p)
    return p


def attempt(path: Path, size: int) -> str:
    tracemalloc.start()
    try:
        r = open_replay(path)
        r.restart()
        r.run_to_end()
        r.final()
        return "ok"
    except TraceError as e:
        assert str(e) and "\n" not in str(e)
        return "error"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 50 * size + (16 << 20), f"peak {peak} for a {size}-byte trace"


def manifest_of(path: Path) -> tuple[dict, dict[str, bytes], bytes]:
    with zipfile.ZipFile(path) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
        comment = z.comment
    raw = np.load(path, allow_pickle=False)["manifest"]
    return json.loads(bytes(raw).decode()), entries, comment


def rezip(out: Path, manifest: dict, entries: dict[str, bytes], comment: bytes) -> None:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.frombuffer(json.dumps(manifest).encode(), np.uint8))
    with zipfile.ZipFile(out, "w") as z:
        for name, data in entries.items():
            if name == "manifest.npy":
                z.writestr(name, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
            else:
                z.writestr(name, data, compress_type=zipfile.ZIP_STORED)
        z.comment = comment


def paths_of(obj, prefix=()):
    """Every (path) to a value inside nested dicts/lists."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from paths_of(v, prefix + (i,))


def test_byte_damage(trace_file, tmp_path):
    data = trace_file.read_bytes()
    rng = np.random.default_rng(SEED)
    out = tmp_path / "b.qdbg"
    outcomes = {"ok": 0, "error": 0}
    for i in range(180):
        b = bytearray(data)
        kind = i % 3
        if kind == 0:
            for pos in rng.integers(0, len(b), int(rng.integers(1, 6))):
                b[int(pos)] ^= int(rng.integers(1, 256))
        elif kind == 1:
            start = int(rng.integers(0, len(b)))
            b[start:start + int(rng.integers(1, 64))] = bytes(min(64, len(b) - start))
        else:
            b = b[:int(rng.integers(0, len(b)))]
        out.write_bytes(bytes(b))
        outcomes[attempt(out, len(b))] += 1
    assert outcomes["error"] >= 90, outcomes


def test_manifest_damage(trace_file, tmp_path):
    manifest, entries, comment = manifest_of(trace_file)
    all_paths = [p for p in paths_of(manifest) if p]
    rng = np.random.default_rng(SEED + 1)
    out = tmp_path / "m.qdbg"
    outcomes = {"ok": 0, "error": 0}
    for i in range(180):
        m = copy.deepcopy(manifest)
        path = all_paths[int(rng.integers(0, len(all_paths)))]
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        last = path[-1]
        if i % 4 == 0 and isinstance(parent, dict):
            del parent[last]
        elif i % 4 == 1 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))   # duplicated entry
        else:
            parent[last] = HOSTILE[int(rng.integers(0, len(HOSTILE)))]
        try:
            rezip(out, m, entries, comment)
        except (ValueError, TypeError):  # json refuses to write it (e.g. NaN handled by allow_nan)
            continue
        outcomes[attempt(out, out.stat().st_size)] += 1
    assert sum(outcomes.values()) >= 150 and outcomes["error"] >= 120, outcomes
