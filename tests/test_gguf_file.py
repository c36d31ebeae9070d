"""Tests for qdbg.gguf_file: agreement with gguf-py's GGUFReader, the lazy StringArray, hostile files.

Files are built in tmp_path with gguf-py's GGUFWriter (well-formed) or packed by hand (malformed).
"""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGUFEndian

from qdbg.errors import GGUFError, QdbgError, UnsupportedError
from qdbg.gguf_file import GGUFFile, StringArray, TensorInfo

VT = GGUFValueType
QT = GGMLQuantizationType

SCALARS: dict[str, tuple[Any, GGUFValueType]] = {
    "t.u8": (200, VT.UINT8), "t.i8": (-100, VT.INT8), "t.u16": (60000, VT.UINT16),
    "t.i16": (-30000, VT.INT16), "t.u32": (4_000_000_000, VT.UINT32), "t.i32": (-2_000_000_000, VT.INT32),
    "t.f32": (0.1, VT.FLOAT32), "t.u64": (2**64 - 5, VT.UINT64), "t.i64": (-(2**62), VT.INT64),
    "t.f64": (1e300, VT.FLOAT64), "t.bool_t": (True, VT.BOOL), "t.bool_f": (False, VT.BOOL),
    "t.str": ("héllo wörld ✓ 日本 🦙", VT.STRING), "t.empty_str": ("", VT.STRING),
}
ARRAYS: dict[str, tuple[list[Any], GGUFValueType]] = {
    "a.u8": ([0, 1, 255], VT.UINT8), "a.i8": ([-128, 0, 127], VT.INT8), "a.u16": ([1, 65535], VT.UINT16),
    "a.i16": ([-5, 5], VT.INT16), "a.u32": ([7, 2**32 - 1], VT.UINT32), "a.i32": ([-1, 2, -3], VT.INT32),
    "a.f32": ([0.5, -1.25, 3.0e-8], VT.FLOAT32), "a.u64": ([2**64 - 1, 0], VT.UINT64),
    "a.i64": ([-(2**63), 2**63 - 1], VT.INT64), "a.f64": ([1.5, -2.0e-300], VT.FLOAT64),
    "a.bool": ([True, False, True], VT.BOOL),
    "a.str": (["<s>", "", "ü", "▁the", "日本語", "🦙", "a b"], VT.STRING),
}
NESTED: dict[str, list[Any]] = {
    "n.ints": [[1, 2], [3, 4, 5]], "n.strs": [["a", "bé"], ["ü"]], "n.deep": [[[1]], [[2, 3]]],
}
TENSORS: list[tuple[str, QT, tuple[int, ...]]] = [  # name, type, numpy shape
    ("blk.0.f32", QT.F32, (2, 3, 4)), ("blk.0.f16", QT.F16, (3, 5)), ("vec", QT.F32, (7,)),
    ("blk.0.q8_0", QT.Q8_0, (4, 64)), ("blk.0.q4_k", QT.Q4_K, (2, 512)), ("four_d", QT.F16, (2, 1, 3, 2)),
]


def write_sample(path: Path, *, alignment: int | None = None, endian: GGUFEndian = GGUFEndian.LITTLE) -> Path:
    """A small well-formed GGUF with every value type, nested arrays and several tensor types."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(path, arch="llama", endianess=endian)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, (val, vt) in SCALARS.items():
        w.add_key_value(key, val, vt)
    for key, (vals, vt) in ARRAYS.items():
        w.add_key_value(key, vals, VT.ARRAY, sub_type=vt)
    for key, vals in NESTED.items():
        w.add_array(key, vals)
    for name, qt, shape in TENSORS:
        if qt == QT.F32:
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
        elif qt == QT.F16:
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float16))
        else:
            block, size = GGML_QUANT_SIZES[qt]
            raw = rng.integers(0, 256, (*shape[:-1], shape[-1] // block * size), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("gguf") / "sample.gguf")


def _plain(v: Any) -> Any:
    if isinstance(v, (np.ndarray, StringArray)):
        return v.tolist()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


# ---------------------------------------------------------------- agreement with GGUFReader


@pytest.mark.parametrize("alignment", [None, 64])
def test_agrees_with_gguf_reader(tmp_path: Path, alignment: int | None) -> None:
    path = write_sample(tmp_path / "s.gguf", alignment=alignment)
    ref = GGUFReader(path)
    with GGUFFile(path) as f:
        assert f.version == 3 and f.alignment == (alignment or 32) == ref.alignment
        assert f.data_offset == ref.data_offset and f.file_size == path.stat().st_size
        ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
        assert list(f.metadata) == ref_keys
        for key in ref_keys:
            field = ref.fields[key]
            assert f.metadata_types[key] == field.types[0], key
            if key in NESTED:  # GGUFReader flattens arrays of arrays; compare with what was written
                assert _plain(f.metadata[key]) == NESTED[key]
                assert f.metadata_array_types[key] == VT.ARRAY
                continue
            assert _plain(f.metadata[key]) == field.contents(), key
            if field.types[0] == VT.ARRAY:
                assert f.metadata_array_types[key] == field.types[1], key
        assert list(f.tensors) == [t.name for t in ref.tensors]
        for rt in ref.tensors:
            t = f.tensors[rt.name]
            assert t.ne == tuple(rt.shape.tolist()) and t.shape == t.ne[::-1]
            assert t.qtype == rt.tensor_type and t.offset == rt.data_offset
            assert t.n_bytes == rt.n_bytes and t.n_elements == rt.n_elements
            raw = f.raw(rt.name)
            assert raw.dtype == np.uint8 and raw.nbytes == t.n_bytes and not raw.flags.writeable
            assert raw.tobytes() == rt.data.tobytes()


def test_values_and_types(sample: Path) -> None:
    f = GGUFFile(sample)
    for key, (val, vt) in SCALARS.items():
        got = f.metadata[key]
        assert f.metadata_types[key] == vt
        if vt == VT.FLOAT32:
            assert got == float(np.float32(val)) and type(got) is float
        else:
            assert got == val and type(got) is type(val)
    for key, (vals, vt) in ARRAYS.items():
        got = f.metadata[key]
        if vt == VT.STRING:
            assert isinstance(got, StringArray) and got.tolist() == vals
        else:
            assert isinstance(got, np.ndarray) and not got.flags.writeable
            want = np.array(vals, dtype=np.bool_ if vt == VT.BOOL else got.dtype)
            assert got.tolist() == want.tolist() and got.dtype.isnative
    assert f.metadata["general.architecture"] == "llama"
    assert [t.qtype for t in f.tensors.values()] == [qt for _, qt, _ in TENSORS]
    assert f.tensors["blk.0.q4_k"] == TensorInfo("blk.0.q4_k", (512, 2), (2, 512), QT.Q4_K,
                                                 f.tensors["blk.0.q4_k"].offset, 2 * 2 * 144)
    f.close()


def test_v2_and_empty_arrays(tmp_path: Path) -> None:
    data = bytearray(write_sample(tmp_path / "s.gguf").read_bytes())
    data[4:8] = struct.pack("<I", 2)
    (tmp_path / "v2.gguf").write_bytes(data)
    assert GGUFFile(tmp_path / "v2.gguf").version == 2
    kvs = [kv("e.u32", arr(VT.UINT32, 0)), kv("e.str", arr(VT.STRING, 0)), kv("e.arr", arr(VT.ARRAY, 0))]
    f = GGUFFile(put(tmp_path, gguf(kvs)))
    assert f.metadata["e.u32"].shape == (0,) and len(f.metadata["e.str"]) == 0 and f.metadata["e.arr"] == []
    assert f.tensors == {}


# ---------------------------------------------------------------- StringArray, API conveniences


def test_string_array(tmp_path: Path) -> None:
    w = GGUFWriter(tmp_path / "t.gguf", arch="llama")
    toks: list[Any] = ["<unk>", "▁a", b"\xff\xfe", "日本", b"ok"]
    w.add_array("tokenizer.ggml.tokens", toks)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    s = GGUFFile(tmp_path / "t.gguf").metadata["tokenizer.ggml.tokens"]
    assert len(s) == 5 and s[0] == "<unk>" and s[-1] == "ok" and s[3] == "日本"
    assert s[2] == "\ufffd\ufffd" and s.get_bytes(2) == b"\xff\xfe" and s.get_bytes(-2) == "日本".encode()
    assert s[1:4] == ["▁a", "\ufffd\ufffd", "日本"] and s[::-2] == ["ok", "\ufffd\ufffd", "<unk>"]
    assert list(s) == s.tolist() == ["<unk>", "▁a", "\ufffd\ufffd", "日本", "ok"]
    assert "▁a" in s and s.index("日本") == 3
    assert s == StringArray.from_strings(toks) and s != StringArray.from_strings(toks[:4])
    assert StringArray.from_strings(["ab", "c"]) != StringArray.from_strings(["a", "bc"])
    assert len(StringArray.from_strings([])) == 0
    with pytest.raises(IndexError):
        s[5]
    with pytest.raises(IndexError):
        s.get_bytes(-6)


def test_get_require_raw_close(sample: Path) -> None:
    f = GGUFFile(sample)
    assert f.get("t.u32") == 4_000_000_000 and f.get("nope", 7) == 7
    assert f.require("t.u32") == f.require("t.u32", VT.UINT32) == f.require("t.u32", (float, int))
    assert f.require("a.str", StringArray) is f.metadata["a.str"]
    with pytest.raises(GGUFError, match=r"sample\.gguf: missing metadata key 'nope'"):
        f.require("nope")
    with pytest.raises(GGUFError, match=r"'t\.f32' has type FLOAT32, expected UINT32 or INT32"):
        f.require("t.f32", (VT.UINT32, VT.INT32))
    with pytest.raises(GGUFError, match=r"'t\.bool_t' has type BOOL, expected int"):
        f.require("t.bool_t", int)
    with pytest.raises(GGUFError, match=r"ARRAY\[INT32\], expected str"):
        f.require("a.i32", str)
    with pytest.raises(GGUFError, match="no tensor named 'missing'"):
        f.raw("missing")
    view = f.raw("vec")
    with pytest.raises(ValueError):
        view[0] = 1
    tokens = f.metadata["a.str"]
    f.close()  # a live view defers unmapping; no error
    assert view.view(np.float32).shape == (7,) and tokens[4] == "日本語"
    with pytest.raises(GGUFError, match="closed"):
        f.raw("vec")
    f.close()


# ---------------------------------------------------------------- hand-packed files


def s(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv(key: bytes | str, payload: bytes) -> bytes:
    return s(key) + payload


def scalar(vt: GGUFValueType, fmt: str, v: Any) -> bytes:
    return struct.pack("<I", vt) + struct.pack("<" + fmt, v)


def arr(vt: GGUFValueType, n: int, body: bytes = b"") -> bytes:
    return struct.pack("<IIQ", VT.ARRAY, vt, n) + body


def tinfo(name: str, ne: list[int], qt: int, off: int) -> bytes:
    return s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, qt, off)


def gguf(kvs: Sequence[bytes] = (), tis: Sequence[bytes] = (), data: bytes = b"", *, version: int = 3,
         n_kv: int | None = None, n_t: int | None = None, magic: bytes = b"GGUF") -> bytes:
    """Header + metadata + tensor index, padded to 32, then `data`."""
    n_t = len(tis) if n_t is None else n_t
    n_kv = len(kvs) if n_kv is None else n_kv
    body = magic + struct.pack("<IQQ", version, n_t, n_kv) + b"".join(kvs) + b"".join(tis)
    return body + bytes(-len(body) % 32) + data


def one_kv(payload: bytes, key: str = "k") -> bytes:
    return gguf([kv(key, payload)])


def with_tensors(*tis: bytes, n_data: int = 32) -> bytes:
    return gguf(tis=tis, data=bytes(n_data))


def put(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


U8_ONE = scalar(VT.UINT8, "B", 1)
F32_ROW = tinfo("w", [4, 2], QT.F32, 0)
DEEP = struct.pack("<IQ", VT.ARRAY, 1) * 9 + struct.pack("<IQ", 0, 0)
BAD: dict[str, tuple[bytes, str]] = {
    "bad magic": (gguf(magic=b"GGML"), "not a GGUF file"),
    "v1": (gguf(version=1), "unsupported GGUF version 1"),
    "v4": (gguf(version=4), "unsupported GGUF version 4"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    "header only": (b"GGUF\x03\x00\x00\x00", "header tensor count"),
    "huge tensor count": (gguf(n_t=2**40), "tensor count 1099511627776"),
    "huge kv count": (gguf(n_kv=2**63), "metadata count"),
    "huge key length": (gguf([struct.pack("<Q", 2**63) + b"k"]), r"key #0 \(9223372036854775808 bytes\)"),
    "huge string value": (one_kv(struct.pack("<IQ", VT.STRING, 2**64 - 1)), "truncated: metadata key 'k'"),
    "huge u8 array": (one_kv(arr(VT.UINT8, 10**12)), r"1000000000000 x UINT8"),
    "huge f64 array": (one_kv(arr(VT.FLOAT64, 2**61)), "x FLOAT64"),
    "huge string array": (one_kv(arr(VT.STRING, 10**12)), "1000000000000 strings"),
    "string overrun": (one_kv(arr(VT.STRING, 2, s("ab") + struct.pack("<Q", 2**63))), "runs past the end"),
    "huge nested array": (one_kv(arr(VT.ARRAY, 10**12)), "1000000000000 arrays"),
    "too deep": (one_kv(arr(VT.ARRAY, 1, DEEP)), "nests arrays"),
    "bad value type": (one_kv(struct.pack("<I", 13) + bytes(8)), "'k' has unknown value type 13"),
    "bad element type": (one_kv(arr(99, 1, bytes(8))), "unknown value type 99"),
    "duplicate key": (gguf([kv("k", U8_ONE)] * 2), "duplicate metadata key 'k'"),
    "empty key": (one_kv(U8_ONE, key=""), "key #0 is empty"),
    "non-utf8 key": (gguf([kv(b"\xff", U8_ONE)]), "not valid UTF-8"),
    "alignment type": (one_kv(scalar(VT.UINT64, "Q", 32), "general.alignment"), "alignment must be UINT32"),
    "alignment 48": (one_kv(scalar(VT.UINT32, "I", 48), "general.alignment"), "not a power of two"),
    "5 dims": (with_tensors(tinfo("w", [1] * 5, QT.F32, 0)), "'w' has 5 dimensions"),
    "zero dim": (with_tensors(tinfo("w", [4, 0], QT.F32, 0)), r"'w' has invalid dimensions \[4, 0\]"),
    "negative dim": (with_tensors(tinfo("w", [2**64 - 1], QT.F32, 0)), "invalid dimensions"),
    "overflowing dims": (with_tensors(tinfo("w", [2**32, 2**31], QT.F32, 0)), "overflows int64"),
    "unknown ggml type": (with_tensors(tinfo("w", [4], 4, 0)), "'w' has unknown ggml type 4"),
    "unknown ggml type 2": (with_tensors(tinfo("w", [4], 1000, 0)), "unknown ggml type 1000"),
    "partial block": (with_tensors(tinfo("w", [16, 2], QT.Q8_0, 0), n_data=96), "not a multiple of the bl"),
    "past EOF": (with_tensors(F32_ROW, n_data=31), r"'w' data \[\d+, \d+\) runs past the end of file"),
    "huge offset": (with_tensors(tinfo("w", [4], QT.F32, 2**64 - 32)), "runs past the end"),
    "unaligned": (with_tensors(tinfo("w", [4], QT.F32, 16), n_data=64), "offset 16 is not a multiple"),
    "overlap": (with_tensors(F32_ROW, tinfo("v", [4], QT.F32, 0)), "'w' and 'v' overlap"),
    "dup tensor": (with_tensors(F32_ROW, tinfo("w", [4], QT.F32, 32), n_data=64), "duplicate tensor name"),
    "truncated tensor info": (gguf(tis=[F32_ROW[:-3]]), "'w' data offset"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed(tmp_path: Path, case: str) -> None:
    data, pattern = BAD[case]
    with pytest.raises(QdbgError, match=pattern) as info:
        GGUFFile(put(tmp_path, data))
    want = UnsupportedError if "ggml type" in case else GGUFError
    assert type(info.value) is want
    msg = str(info.value)
    assert msg.startswith(str(tmp_path / "bad.gguf") + ": ") and "\n" not in msg and "unexpected" not in msg


def test_good_hand_packed_file(tmp_path: Path) -> None:
    """The hand packer itself is right: the same layouts without a fault parse."""
    body = np.arange(8, dtype=np.float32).tobytes() + np.float32(9).tobytes()
    scalar_t = tinfo("s", [], QT.F32, 32)  # n_dims = 0: a scalar
    f = GGUFFile(put(tmp_path, gguf([kv("k", U8_ONE)], [F32_ROW, scalar_t], body)))
    assert f.metadata == {"k": 1} and f.raw("w").view(np.float32).tolist() == list(range(8))
    assert f.tensors["s"].ne == () and f.tensors["s"].n_elements == 1 and f.raw("s").view(np.float32) == 9
    deep = arr(VT.ARRAY, 1, struct.pack("<IQ", VT.ARRAY, 1) * 6 + struct.pack("<IQB", VT.UINT8, 1, 5))
    assert GGUFFile(put(tmp_path, one_kv(deep))).metadata["k"] == [[[[[[[np.array([5], np.uint8)]]]]]]]


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="is a directory"):
        GGUFFile(tmp_path)
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "missing.gguf")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(GGUFError, match="not a regular file"):
        GGUFFile(tmp_path / "fifo")
    with pytest.raises(GGUFError, match="empty file"):
        GGUFFile(put(tmp_path, b""))
    with pytest.raises(GGUFError, match="big-endian"):
        GGUFFile(write_sample(tmp_path / "be.gguf", endian=GGUFEndian.BIG))


def test_every_truncation(sample: Path, tmp_path: Path) -> None:
    data = sample.read_bytes()
    ref = GGUFFile(sample)
    data_end = max(t.offset + t.n_bytes for t in ref.tensors.values())
    # every cut inside the header and index, then a stride through the data section
    cuts = list(range(ref.data_offset + 1)) + list(range(ref.data_offset, data_end, 7))
    for cut in cuts:
        with pytest.raises(GGUFError) as info:
            GGUFFile(put(tmp_path, data[:cut]))
        msg = str(info.value)
        assert ("truncated" in msg or "runs past the end" in msg or "empty file" in msg), (cut, msg)
        assert "unexpected" not in msg
    for cut in range(data_end, len(data) + 1):  # trailing padding is optional
        assert len(GGUFFile(put(tmp_path, data[:cut])).tensors) == len(TENSORS)


def test_random_corruption_never_escapes(sample: Path, tmp_path: Path) -> None:
    data = sample.read_bytes()
    header_end = GGUFFile(sample).data_offset
    rng = random.Random(1234)
    for _ in range(400):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(header_end)
            bad[pos] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        try:
            GGUFFile(put(tmp_path, bytes(bad)))
        except (GGUFError, UnsupportedError) as e:
            assert "unexpected" not in str(e) and "\n" not in str(e), str(e)
