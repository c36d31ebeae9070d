"""Seeded fuzzing of hostile GGUF files: every case loads correctly or raises qdbg's own error.

Mutations of a valid synthetic model, located with a small structural walker so they hit real
fields: bit flips, truncation at every structural boundary, huge counts/dimensions/offsets/string
lengths, wrong value types, unknown tensor types, duplicated names. "Loads correctly" means the
reader, the architecture config and the dequantization of every tensor all succeed; any failure
must be a QdbgError with a one-line message. Peak traced allocation must stay within a small
multiple of the file size (numpy reports its buffers to tracemalloc).
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from qdbg.errors import QdbgError
from qdbg.model import Model

SEED = 20261127
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def walk(buf: bytes) -> list[tuple[str, int, int]]:
    """(kind, offset, size) of every header field of a well-formed GGUF v3 file."""
    f: list[tuple[str, int, int]] = [("magic", 0, 4), ("version", 4, 4), ("n_tensors", 8, 8), ("n_kv", 16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    o = 24

    def string(kind: str) -> None:
        nonlocal o
        (n,) = struct.unpack_from("<Q", buf, o)
        f.append((kind + "_len", o, 8))
        f.append((kind, o + 8, n))
        o += 8 + n

    def value(t: int) -> None:
        nonlocal o
        if t == 8:
            string("str")
        elif t == 9:
            (et,) = struct.unpack_from("<I", buf, o)
            (n,) = struct.unpack_from("<Q", buf, o + 4)
            f.append(("arr_type", o, 4))
            f.append(("arr_len", o + 4, 8))
            o += 12
            for _ in range(n):
                value(et)
        else:
            f.append(("scalar", o, SCALAR_SIZES[t]))
            o += SCALAR_SIZES[t]

    for _ in range(n_kv):
        string("key")
        (t,) = struct.unpack_from("<I", buf, o)
        f.append(("value_type", o, 4))
        o += 4
        value(t)
    for _ in range(n_tensors):
        string("tensor_name")
        (nd,) = struct.unpack_from("<I", buf, o)
        f.append(("n_dims", o, 4))
        o += 4
        for _ in range(nd):
            f.append(("dim", o, 8))
            o += 8
        f.append(("ggml_type", o, 4))
        f.append(("offset", o + 4, 8))
        o += 12
    f.append(("data", o, len(buf) - o))
    return f


def load_fully(path: Path) -> None:
    m = Model(path)
    for name in m.tensors:
        m.weight(name)
    m.close()


def check(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    tracemalloc.start()
    try:
        load_fully(path)
        outcome = "ok"
    except QdbgError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        outcome = "error"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # a valid load holds the float64 matrices (8 bytes per weight) of a file holding >= 1 byte/weight
    assert peak < 40 * len(data) + (8 << 20), f"peak allocation {peak} for a {len(data)}-byte file"
    return outcome


def mutations(buf: bytes, rng: np.random.Generator):
    fields = walk(buf)
    header = [x for x in fields if x[0] != "data"]
    end_of_header = fields[-1][1]
    # truncation at every structural boundary (and one byte either side)
    for _, off, size in header:
        for cut in (off, off + size // 2, off + size, off + size + 1):
            if 0 <= cut < len(buf):
                yield "truncate", buf[:cut]
    for cut in rng.integers(end_of_header, len(buf), 20):
        yield "truncate-data", buf[:int(cut)]
    # huge or hostile integers in every count, length, dim and offset
    huge = [2**63 - 1, 2**64 - 1, 2**32, 2**40 + 7, 0, 1, len(buf) * 3]
    for kind, off, size in header:
        if kind in ("n_tensors", "n_kv", "key_len", "str_len", "tensor_name_len", "arr_len", "dim",
                    "offset") and size == 8:
            for v in huge[: 3 if kind in ("dim", "offset") else 7]:
                b = bytearray(buf)
                struct.pack_into("<Q", b, off, v)
                yield f"huge-{kind}", bytes(b)
        if kind in ("n_dims", "ggml_type", "value_type", "arr_type", "version"):
            for v in (0, 3, 5, 9, 13, 39, 1000, 2**31):
                b = bytearray(buf)
                struct.pack_into("<I", b, off, v)
                yield f"bad-{kind}", bytes(b)
    # duplicated names: give a key or tensor name the bytes of an earlier one of the same length
    names: dict[tuple[str, int], list[int]] = {}
    for kind, off, size in header:
        if kind in ("key", "tensor_name"):
            names.setdefault((kind, size), []).append(off)
    for (kind, size), offs in names.items():
        if len(offs) > 1:
            b = bytearray(buf)
            b[offs[1]:offs[1] + size] = buf[offs[0]:offs[0] + size]
            yield f"duplicate-{kind}", bytes(b)
    # random bit flips, weighted to the header
    for i in range(500):
        b = bytearray(buf)
        hi = end_of_header if i % 4 else len(buf)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, hi))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        yield "bitflip", bytes(b)


@pytest.mark.parametrize("arch, ftype", [("qwen2", "Q4_K_M")])
def test_hostile_gguf_files(synth_model, tmp_path, arch, ftype):
    src = Path(synth_model(arch, ftype, n_vocab=384, n_embd=256, n_ff=256, n_layer=1))
    buf = src.read_bytes()
    assert check(tmp_path / "orig.gguf", buf) == "ok"
    rng = np.random.default_rng(SEED)
    counts: dict[str, int] = {}
    outcomes = {"ok": 0, "error": 0}
    for kind, data in mutations(buf, rng):
        outcomes[check(tmp_path / "m.gguf", data)] += 1
        counts[kind] = counts.get(kind, 0) + 1
    total = sum(counts.values())
    assert total >= 1000, counts
    assert outcomes["error"] > total // 3, outcomes  # most mutations must be caught, not ignored
