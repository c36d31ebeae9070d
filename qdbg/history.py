"""Bounded history memory: the arrays a debugger's history holds stay under a byte budget; past
it, the oldest go to a private spill file and come back on access.

`HistoryStore(budget)` adopts each record's per-side arrays (`Record.values`, `Record.aux`) as an
`Arrays` mapping, so `rec.values["A"]` keeps working. When the arrays held in memory pass the
budget, the oldest are written to the store's spill file (raw bytes at page-aligned offsets, with
dtype and shape kept beside: reading back gives identical bits) and dropped from memory.

Reading a spilled array maps its bytes read-only (one shared `mmap` of the spill file, not one
file descriptor per array) and returns a view; nothing is attached back to the record. When the
last view of it is gone its pages are released (`madvise(MADV_DONTNEED)`), so walking a spilled
history record by record (a re-measure on a scope change, a trace save) holds only what is in use.

The budget is `$QDBG_HISTORY_BYTES` (bytes, or with a K/M/G suffix, binary), else DEFAULT_BYTES.
The spill file lives in a private folder (`tempfile.mkdtemp`, mode 0700) and is unlinked as soon as
it is open, so nothing lingers even after a crash (its space returns when the last record or view
using it goes); the folder is removed by `close()` or at exit.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from typing import Any, Iterator, Mapping, MutableMapping

import numpy as np

from qdbg.errors import UsageError

__all__ = ["DEFAULT_BYTES", "Arrays", "Dropped", "HistoryStore", "budget_from_env"]

GiB = 1 << 30


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _default_bytes() -> int:
    ram = _ram_bytes()
    return 2 * GiB if not ram else max(256 << 20, min(2 * GiB, ram // 8))


DEFAULT_BYTES = _default_bytes()
"""2 GiB (at most an eighth of the RAM, at least 256 MiB): a whole short-prompt session of a 1B
model stays in memory (no disk at all), while a 512-token prompt on a 1.1B model (~7 GB of
values with attribution) stays near 4 GB in all: two sets of weights, the pass's live values
and this budget."""

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
           "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_bytes(text: str) -> int:
    """'2G', '512M', '1048576' -> bytes (binary suffixes); UsageError otherwise."""
    t = str(text).strip().upper().replace("_", "")
    num = t.rstrip("KMGIB")
    try:
        n = float(num) * _SUFFIX[t[len(num):]]
    except (KeyError, ValueError):
        raise UsageError(f"QDBG_HISTORY_BYTES wants a byte count such as 2G or 536870912, got {text!r}") from None
    if n < 0 or n != n:
        raise UsageError(f"QDBG_HISTORY_BYTES must not be negative, got {text!r}")
    return int(n)


def budget_from_env() -> int:
    """$QDBG_HISTORY_BYTES if set, else DEFAULT_BYTES."""
    env = os.environ.get("QDBG_HISTORY_BYTES", "").strip()
    return parse_bytes(env) if env else DEFAULT_BYTES


# ---- the spill file ---------------------------------------------------------------------------

def _release(mm: mmap.mmap, start: int, length: int) -> None:
    """Drop a released view's pages from this process (they stay in the file)."""
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, min(length, len(mm) - start))
    except (AttributeError, ValueError, OSError):
        pass


class _SpillFile:
    """An append-only file of raw array bytes at page-aligned offsets, unlinked once open."""

    def __init__(self, folder: str) -> None:
        fd, path = tempfile.mkstemp(prefix="spill-", dir=folder)
        os.unlink(path)   # the open descriptor (and live mappings) keep it until they close
        self.fd = fd
        self.size = 0
        self._mm: mmap.mmap | None = None
        weakref.finalize(self, os.close, fd)   # with the last record (or view's mapping) that uses it

    def write(self, arr: np.ndarray) -> int:
        """Append `arr`'s bytes (C order); their offset."""
        off = -(-self.size // mmap.PAGESIZE) * mmap.PAGESIZE
        buf = memoryview(np.ascontiguousarray(arr)).cast("B")
        done = 0
        while done < len(buf):
            done += os.pwrite(self.fd, buf[done:], off + done)
        self.size = off + len(buf)
        return off

    def read(self, off: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A read-only view of the array written at `off`."""
        n = int(np.prod(shape, dtype=np.int64))
        end = off + n * dtype.itemsize
        if self._mm is None or len(self._mm) < end:   # the file grew since it was mapped: map it again
            self._mm = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        mm = self._mm
        flat = np.frombuffer(mm, dtype=dtype, count=n, offset=off)
        weakref.finalize(flat, _release, mm, off, end - off)   # every view of it derives from `flat`
        return flat.reshape(shape)


class _Spilled:
    """Where one spilled array is: its file, offset, dtype and shape."""

    __slots__ = ("file", "off", "dtype", "shape", "nbytes")

    def __init__(self, file: _SpillFile, off: int, arr: np.ndarray) -> None:
        self.file, self.off, self.dtype, self.shape, self.nbytes = file, off, arr.dtype, arr.shape, arr.nbytes

    def load(self) -> np.ndarray:
        return self.file.read(self.off, self.dtype, self.shape)


_MISSING = object()


def _spillable(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.nbytes > 0 and not v.dtype.hasobject


# ---- one record's arrays ------------------------------------------------------------------------

class Arrays(MutableMapping[str, np.ndarray]):
    """A record's arrays by label, some in memory and some spilled; reading a spilled one returns
    a read-only view of the spill file (not kept here). Setting a label keeps the new array in
    memory, counted against the store's budget."""

    def __init__(self, store: HistoryStore, items: Mapping[str, Any] = ()) -> None:
        self._store = store
        self._mem: dict[str, Any] = {}
        self._disk: dict[str, _Spilled] = {}
        self._order: list[str] = []
        for k, v in dict(items).items():
            self[k] = v

    def __getitem__(self, key: str) -> Any:
        v = self._mem.get(key, _MISSING)
        if v is not _MISSING:
            return v
        s = self._disk.get(key)
        if s is not None:
            return s.load()
        v = self._mem.get(key, _MISSING)   # set by another thread meanwhile
        if v is _MISSING:
            raise KeyError(key)
        return v

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self:
            del self[key]
        self._order.append(key)
        self._mem[key] = value
        if _spillable(value):
            self._store._held(self, key, value.nbytes)

    def __delitem__(self, key: str) -> None:
        if key in self._mem:
            del self._mem[key]
            self._store._dropped(self, key)
        else:
            del self._disk[key]
        self._order.remove(key)

    def __contains__(self, key: object) -> bool:
        return key in self._mem or key in self._disk

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        return "Arrays(" + ", ".join(k + ("*" if k in self._disk else "") for k in self._order) + ")"

    @property
    def nbytes(self) -> int:
        """Bytes of all the arrays, in memory or spilled (nothing is read)."""
        return (sum(int(getattr(v, "nbytes", 0)) for v in self._mem.values())
                + sum(s.nbytes for s in self._disk.values()))

    def spilled(self, key: str) -> bool:
        return key in self._disk

    def _spill(self, key: str, file: _SpillFile) -> int:
        arr = self._mem[key]
        self._disk[key] = _Spilled(file, file.write(arr), arr)   # on disk before it leaves memory:
        del self._mem[key]                                      # a reader always finds one of them
        return arr.nbytes


class Dropped(Mapping[str, np.ndarray]):
    """A record's arrays after a session that does not keep them (HistoryStore.drop): the labels
    stay, reading one is a QdbgError naming why."""

    def __init__(self, keys: Iterator[str] | list[str]) -> None:
        self._keys = list(keys)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._keys:
            raise KeyError(key)
        from qdbg.errors import QdbgError

        raise QdbgError(f"the values of '{key}' were not kept: this session keeps only each op's "
                        "measurements (qdbg run keeps values with --trace)")

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return "Dropped(" + ", ".join(self._keys) + ")"


# ---- the store ----------------------------------------------------------------------------------

class HistoryStore:
    """The budget over a history's arrays; see the module docstring."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget_from_env() if budget is None else int(budget)
        if self.budget < 0:
            raise UsageError(f"the history budget must not be negative, got {budget}")
        self.resident = 0
        """Bytes of the adopted arrays held in memory."""
        self.spilled_bytes = 0
        """Bytes written to the spill file since the last clear."""
        self._lru: OrderedDict[tuple[int, str], tuple[Arrays, int]] = OrderedDict()   # oldest first
        self._folder: str | None = None
        self._file: _SpillFile | None = None
        self._cleanup: weakref.finalize | None = None
        self.closed = False

    @property
    def folder(self) -> str | None:
        """The private spill folder (None until something is spilled, and after close)."""
        return self._folder

    def adopt(self, rec: Any) -> None:
        """Hold `rec.values` and `rec.aux` as Arrays under this budget (spilling if past it)."""
        for attr in ("values", "aux"):
            cur = getattr(rec, attr, None)
            if cur is not None and not (isinstance(cur, Arrays) and cur._store is self):
                setattr(rec, attr, Arrays(self, cur))
        self.trim()

    def drop(self, rec: Any) -> None:
        """Let go of `rec.values` and `rec.aux` (measured already): a session that will not read
        them again (`qdbg run` without --trace) holds no op values at all, so its memory does not
        grow with the model's depth or the prompt's length."""
        for attr in ("values", "aux"):
            cur = getattr(rec, attr, None)
            if cur is not None and not isinstance(cur, Dropped):
                if isinstance(cur, Arrays):
                    for k in list(cur._mem):
                        self._dropped(cur, k)
                setattr(rec, attr, Dropped(list(cur)))

    def trim(self) -> None:
        """Spill the oldest arrays held until the rest fit in the budget."""
        while self.resident > self.budget and self._lru and not self.closed:
            (_, key), (arrays, n) = self._lru.popitem(last=False)
            self.resident -= n
            self.spilled_bytes += arrays._spill(key, self._spill_file())

    def clear(self) -> None:
        """Forget every adopted array (a restart); views and records still held elsewhere stay
        readable until they go (the spill file closes with its last user)."""
        self._lru.clear()
        self.resident = self.spilled_bytes = 0
        self._file = None

    def close(self) -> None:
        """Clear and remove the spill folder. Records still held elsewhere keep reading their
        spilled values (the unlinked file stays open until they go); nothing more is spilled (a closed
        store keeps what it is given in memory)."""
        self.clear()
        self.closed = True
        if self._cleanup is not None:
            self._cleanup()
        self._folder = None

    # -- bookkeeping called by Arrays ----------------------------------------------------------
    def _held(self, arrays: Arrays, key: str, n: int) -> None:
        self._lru[(id(arrays), key)] = (arrays, n)
        self.resident += n
        self.trim()

    def _dropped(self, arrays: Arrays, key: str) -> None:
        got = self._lru.pop((id(arrays), key), None)
        if got is not None:
            self.resident -= got[1]

    def _spill_file(self) -> _SpillFile:
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="qdbg-history-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._folder, True)
        if self._file is None:
            self._file = _SpillFile(self._folder)
        return self._file
