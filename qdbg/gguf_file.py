"""Lean GGUF reader: header, metadata and tensor index parsed over a read-only mmap.

gguf-py's GGUFReader builds Python objects per vocabulary entry (seconds on a 262k vocab); this reader
answers in milliseconds: one tight pass finds where each string of an array starts, strings are decoded
only when asked, numeric arrays are bulk numpy copies, tensor bytes are zero-copy views of the map.
gguf-py is used only for its constants (GGMLQuantizationType, GGUFValueType, GGML_QUANT_SIZES).

Layout (little-endian; v2 and v3 share it):
    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x      [str key | u32 value_type | value]        str = u64 length + UTF-8 bytes
                array value = u32 element_type | u64 count | count x element
    n_tensors x [str name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset]
    padding to `general.alignment` (default 32) | tensor data (offsets relative to here)

Every count and length is checked against the bytes left before anything is allocated; any fault is a
one-line GGUFError naming the file (UnsupportedError for a ggml type this gguf-py does not know).
"""

from __future__ import annotations

import math
import mmap
import operator
import os
import pathlib
import stat
import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, overload

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from qdbg.errors import GGUFError, UnsupportedError

__all__ = ["GGUFFile", "StringArray", "TensorInfo"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 8  # arrays of arrays deeper than this are refused (bounds the recursion)
_INT64_MAX = 2**63 - 1
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-byte key, value type, u8 value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, n_dims=0, ggml type, offset

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SCALAR_FORMATS: dict[GGUFValueType, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"), GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"), GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"), GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"), GGUFValueType.BOOL: struct.Struct("<B"),
    GGUFValueType.UINT64: struct.Struct("<Q"), GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}
# on-disk dtypes of numeric arrays; BOOL is read as bytes and turned into np.bool_
_ARRAY_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"), GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"), GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"), GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"), GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"), GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One entry of the tensor index. `ne` is ggml order (ne[0] = row length), `shape` numpy order."""

    name: str
    ne: tuple[int, ...]
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    offset: int  # absolute byte offset of the data in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        """Number of scalar elements (product of ne)."""
        return math.prod(self.ne)


class StringArray(Sequence[str]):
    """Lazy array of GGUF strings: keeps the raw length-prefixed bytes, decodes one string on demand.

    Decoding uses errors="replace"; `get_bytes` gives the exact bytes (tokens need not be valid UTF-8).
    Two StringArrays compare equal iff they hold the same strings (one bytes comparison).
    """

    __slots__ = ("_data", "_starts", "_ends")

    def __init__(self, data: bytes, starts: np.ndarray) -> None:
        # data = [u64 len][bytes][u64 len][bytes]...; starts[i] = offset of string i's bytes in data
        self._data = data
        self._starts = starts
        self._ends = np.empty_like(starts)
        if len(starts):
            self._ends[:-1] = starts[1:] - 8
            self._ends[-1] = len(data)

    @classmethod
    def from_strings(cls, items: Iterable[str | bytes]) -> StringArray:
        """Build a StringArray from Python strings or bytes (UTF-8 encoded), e.g. for tests."""
        raw = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in items]
        lengths = np.array([len(b) for b in raw], dtype=np.int64)
        data = b"".join(_U64.pack(len(b)) + b for b in raw)
        starts = np.cumsum(lengths + 8) - lengths if len(raw) else np.zeros(0, np.int64)
        return cls(data, starts.astype(np.int64))

    def __len__(self) -> int:
        return len(self._starts)

    def _index(self, i: int) -> int:
        n = len(self._starts)
        j = operator.index(i)
        j = j + n if j < 0 else j
        if not 0 <= j < n:
            raise IndexError(f"StringArray index {i} out of range for length {n}")
        return j

    def get_bytes(self, i: int) -> bytes:
        """Raw bytes of string i."""
        j = self._index(i)
        return self._data[int(self._starts[j]):int(self._ends[j])]

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self.get_bytes(j).decode("utf-8", "replace") for j in range(*i.indices(len(self)))]
        return self.get_bytes(i).decode("utf-8", "replace")

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def tolist(self) -> list[str]:
        """All strings, decoded (about 0.5 s per million)."""
        data, spans = self._data, zip(self._starts.tolist(), self._ends.tolist())
        return [data[s:e].decode("utf-8", "replace") for s, e in spans]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return self._data == other._data  # the length prefixes make the raw layout canonical
        if isinstance(other, (list, tuple)):
            return self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"StringArray(n={len(self)}, [{head}{', ...' if len(self) > 3 else ''}])"


class _Cursor:
    """Bounds-checked little-endian reads over the map; every fault names what was being read."""

    __slots__ = ("buf", "pos", "end", "label")

    def __init__(self, buf: mmap.mmap, end: int, label: str) -> None:
        self.buf, self.pos, self.end, self.label = buf, 0, end, label

    def fail(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.label}: {msg}")

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                            f"only {self.end - self.pos} left")

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        (v,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return v

    def string(self, what: str) -> bytes:
        n = self.unpack(_U64, f"{what} length")
        self.need(n, f"{what} ({n} bytes)")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def name(self, what: str) -> str:
        b = self.string(what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8: {b[:40]!r}") from None

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.unpack(_U32, f"{what} type")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"{what} has unknown value type {raw}") from None

    def string_array(self, n: int, what: str) -> StringArray:
        # one pass over the length prefixes; struct raises past the end of the map, checked after
        self.need(8 * n, f"{what} ({n} strings)")
        buf, pos0, pos, unpack = self.buf, self.pos, self.pos, _U64.unpack_from
        starts = array("q")
        push = starts.append
        try:
            for _ in range(n):
                (k,) = unpack(buf, pos)
                pos += 8
                push(pos - pos0)
                pos += k
        except (struct.error, OverflowError):
            pos = self.end + 1
        if pos > self.end:
            raise self.fail(f"truncated: {what} ({n} strings from offset {pos0}) runs past the end of file")
        self.pos = pos
        offsets = np.frombuffer(starts, dtype=np.int64) if n else np.zeros(0, np.int64)
        return StringArray(buf[pos0:pos], offsets)

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0) -> Any:
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is not None:
            v = self.unpack(fmt, what)
            return v != 0 if vtype == GGUFValueType.BOOL else v
        if vtype == GGUFValueType.STRING:
            return self.string(what).decode("utf-8", "replace")
        return self.array(what, depth)[0]

    def array(self, what: str, depth: int = 0) -> tuple[Any, GGUFValueType]:
        """An array value (after its ARRAY type tag) and its element type."""
        if depth >= MAX_NESTING:
            raise self.fail(f"{what} nests arrays more than {MAX_NESTING} deep")
        etype = self.value_type(f"{what} element")
        n = self.unpack(_U64, f"{what} count")
        dtype = _ARRAY_DTYPES.get(etype)
        if dtype is not None:
            self.need(n * dtype.itemsize, f"{what} ({n} x {etype.name})")
            out = np.bool_ if etype == GGUFValueType.BOOL else dtype.newbyteorder("=")
            arr = np.frombuffer(self.buf, dtype, n, self.pos).astype(out) if n else np.zeros(0, out)
            self.pos += n * dtype.itemsize
            arr.flags.writeable = False
            return arr, etype
        if etype == GGUFValueType.STRING:
            return self.string_array(n, what), etype
        self.need(n * 12, f"{what} ({n} arrays)")  # each inner array has at least a type and a count
        return [self.value(etype, f"{what}[{i}]", depth + 1) for i in range(n)], etype


class GGUFFile:
    """A GGUF file opened read-only: version, metadata, tensor index, and zero-copy tensor bytes.

    Metadata survives close(): scalars are Python values, numeric arrays read-only numpy copies, string
    arrays StringArray, arrays of arrays lists. Only raw() touches the map.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        label = str(self.path)
        self._mm: mmap.mmap | None = None
        self._buf: np.ndarray | None = None
        try:
            mode = os.stat(self.path).st_mode  # before open(): opening a FIFO would block
            if stat.S_ISDIR(mode):
                raise GGUFError(f"{label}: is a directory, not a GGUF file")
            if not stat.S_ISREG(mode):
                raise GGUFError(f"{label}: not a regular file")
            fh = open(self.path, "rb")
        except OSError as e:
            raise GGUFError(f"{label}: cannot open: {e.strerror or e}") from None
        with fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise GGUFError(f"{label}: empty file, not a GGUF file")
            try:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                raise GGUFError(f"{label}: cannot map file: {e}") from None
        self.file_size = len(mm)
        try:
            self._parse(_Cursor(mm, self.file_size, label))
        except (GGUFError, UnsupportedError):
            _close_map(mm)
            raise
        except (struct.error, IndexError, ValueError, OverflowError, UnicodeError, MemoryError) as e:
            _close_map(mm)  # backstop: should be unreachable, every read above is checked
            raise GGUFError(f"{label}: malformed GGUF file (unexpected {type(e).__name__}: {e})") from e
        self._mm = mm
        self._buf = np.frombuffer(mm, dtype=np.uint8)

    def _parse(self, cur: _Cursor) -> None:
        cur.need(4, "GGUF magic")
        magic = cur.buf[:4]
        if magic != GGUF_MAGIC:
            raise cur.fail(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        cur.pos = 4
        version = cur.unpack(_U32, "header version")
        if version & 0xFFFF == 0 and version:
            raise cur.fail(f"big-endian GGUF files are not supported (version field 0x{version:08x})")
        if version not in SUPPORTED_VERSIONS:
            raise cur.fail(f"unsupported GGUF version {version}")
        self.version: int = version
        n_tensors = cur.unpack(_U64, "header tensor count")
        n_kv = cur.unpack(_U64, "header metadata count")
        left = cur.end - cur.pos
        if n_tensors * _MIN_TENSOR_BYTES > left:
            raise cur.fail(f"tensor count {n_tensors} cannot fit in the {left} bytes after the header "
                           "(truncated or corrupt)")
        if n_kv * _MIN_KV_BYTES > left:
            raise cur.fail(f"metadata count {n_kv} cannot fit in the {left} bytes after the header "
                           "(truncated or corrupt)")

        metadata: dict[str, Any] = {}
        types: dict[str, GGUFValueType] = {}
        array_types: dict[str, GGUFValueType] = {}
        for i in range(n_kv):
            key = cur.name(f"metadata key #{i}")
            if not key:
                raise cur.fail(f"metadata key #{i} is empty")
            if key in metadata:
                raise cur.fail(f"duplicate metadata key {key!r}")
            what = f"metadata key {key!r}"
            vtype = cur.value_type(what)
            if vtype == GGUFValueType.ARRAY:
                metadata[key], array_types[key] = cur.array(what)
            else:
                metadata[key] = cur.value(vtype, what)
            types[key] = vtype
        self.metadata: Mapping[str, Any] = MappingProxyType(metadata)
        self.metadata_types: Mapping[str, GGUFValueType] = MappingProxyType(types)
        self.metadata_array_types: Mapping[str, GGUFValueType] = MappingProxyType(array_types)

        self.alignment: int = DEFAULT_ALIGNMENT
        if "general.alignment" in metadata:
            if types["general.alignment"] != GGUFValueType.UINT32:
                raise cur.fail(f"general.alignment must be UINT32, not {types['general.alignment'].name}")
            a = metadata["general.alignment"]
            if a == 0 or a & (a - 1):
                raise cur.fail(f"general.alignment {a} is not a power of two")
            self.alignment = a

        entries = [self._tensor_entry(cur, i) for i in range(n_tensors)]
        self.data_offset: int = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, ne, qtype, rel, n_bytes in entries:
            if name in self.tensors:
                raise cur.fail(f"duplicate tensor name {name!r}")
            if rel % self.alignment:
                raise cur.fail(f"tensor {name!r} offset {rel} is not a multiple of the alignment "
                               f"{self.alignment}")
            start = self.data_offset + rel
            if start + n_bytes > self.file_size:
                raise cur.fail(f"tensor {name!r} data [{start}, {start + n_bytes}) runs past the end of file "
                               f"({self.file_size} bytes)")
            self.tensors[name] = TensorInfo(name, ne, ne[::-1], qtype, start, n_bytes)
        spans = [(t.offset, t.offset + t.n_bytes, t.name) for t in self.tensors.values()]
        spans.sort(key=lambda sp: sp[0])  # stable: ties stay in file order
        for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise cur.fail(f"tensors {name_a!r} and {name_b!r} overlap")

    @staticmethod
    def _tensor_entry(cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int, int]:
        name = cur.name(f"tensor #{i} name")
        what = f"tensor {name!r}"
        n_dims = cur.unpack(_U32, f"{what} n_dims")
        if n_dims > MAX_DIMS:
            raise cur.fail(f"{what} has {n_dims} dimensions, at most {MAX_DIMS} allowed")
        cur.need(8 * n_dims, f"{what} dimensions")
        ne = struct.unpack_from(f"<{n_dims}Q", cur.buf, cur.pos)
        cur.pos += 8 * n_dims
        if any(d <= 0 or d > _INT64_MAX for d in ne):
            raise cur.fail(f"{what} has invalid dimensions {list(ne)} (each must be in [1, 2^63))")
        n_elements = math.prod(ne)
        if n_elements > _INT64_MAX:
            raise cur.fail(f"{what} element count of dimensions {list(ne)} overflows int64")
        raw_type = cur.unpack(_U32, f"{what} ggml type")
        try:
            qtype = GGMLQuantizationType(raw_type)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise UnsupportedError(f"{cur.label}: tensor {name!r} has unknown ggml type {raw_type}") from None
        row = ne[0] if ne else 1  # n_dims = 0 is a scalar
        if row % block:
            raise cur.fail(f"{what} ({qtype.name}) row length {row} is not a multiple of the block size "
                           f"{block}")
        rel = cur.unpack(_U64, f"{what} data offset")
        return name, tuple(ne), qtype, rel, n_elements // block * type_size

    def raw(self, name: str) -> np.ndarray:
        """Read-only uint8 view of a tensor's bytes (no copy; valid while the file is open)."""
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(f"{self.path}: no tensor named {name!r}")
        if self._buf is None:
            raise GGUFError(f"{self.path}: file is closed (reading tensor {name!r})")
        return self._buf[info.offset:info.offset + info.n_bytes]

    def get(self, key: str, default: Any = None) -> Any:
        """Metadata value for key, or default."""
        return self.metadata.get(key, default)

    def require(self, key: str, types: Any = None) -> Any:
        """Metadata value for key; GGUFError if missing or (with `types`) of another type.

        `types` is a GGUFValueType, a Python type (int, float, str, bool, np.ndarray, StringArray,
        list), or a tuple of these. A bool never passes for int.
        """
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: missing metadata key {key!r}")
        value = self.metadata[key]
        if types is None:
            return value
        allowed = tuple(types) if isinstance(types, (tuple, list)) else (types,)
        vtype = self.metadata_types[key]
        for t in allowed:
            if isinstance(t, GGUFValueType):
                if t == vtype:
                    return value
            elif isinstance(value, t) and not (isinstance(value, bool) and t is not bool):
                return value
        got = vtype.name
        if vtype == GGUFValueType.ARRAY:
            got += f"[{self.metadata_array_types[key].name}]"
        want = " or ".join(t.name if isinstance(t, GGUFValueType) else t.__name__ for t in allowed)
        raise GGUFError(f"{self.path}: metadata key {key!r} has type {got}, expected {want}")

    def close(self) -> None:
        """Release the map (deferred while views from raw() are still alive)."""
        self._buf = None
        mm, self._mm = self._mm, None
        if mm is not None:
            _close_map(mm)

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, "
                f"{len(self.tensors)} tensors)")


def _close_map(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # numpy views still exported; the map goes when they do
        pass
