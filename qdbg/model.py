"""Model: one GGUF file opened for the engine — its configuration and lazily dequantized weights.

Opening reads only the header and tensor index (qdbg.gguf_file). Exact mode reads each weight's
bytes straight from the file's read-only map; the pages of the map a process touches count in its
memory (RSS), so `ResidentPages` hands the pages of the least recently used weights back to the
kernel once more than QDBG_RESIDENT_BYTES of them were touched (they stay in the page cache and
come back on the next use): memory follows the largest weights in use, not the model's size.
The approximate modes dequantize a weight the first time the engine asks for it and keep it in a
cache with a byte budget (QDBG_CACHE_BYTES); the least recently used weights are dropped first,
so models too big to hold dequantized still run.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from qdbg.arch import ModelConfig, config_from_metadata
from qdbg.engine.weights import Weight
from qdbg.errors import GGUFError, QdbgError

DEFAULT_CACHE_BYTES = int(os.environ.get("QDBG_CACHE_BYTES", 4 << 30))
DEFAULT_RESIDENT_BYTES = int(os.environ.get("QDBG_RESIDENT_BYTES", 64 << 20))
_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux


def _release_pages(raw: np.ndarray) -> bool:
    """madvise(MADV_DONTNEED) the whole pages inside a read-only file map view: they leave the
    process's RSS (the kernel keeps them in its page cache; the next read maps them again, same
    bytes). False where this is not available (not Linux)."""
    if not sys.platform.startswith("linux") or raw.size == 0:
        return False
    start = raw.__array_interface__["data"][0]
    lo = -(-start // _PAGE) * _PAGE                    # whole pages only: neighbours keep theirs
    hi = (start + raw.nbytes) // _PAGE * _PAGE
    if hi <= lo:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED) == 0


def _is_file_map(raw: np.ndarray) -> bool:
    """Whether `raw` is a view of an mmap (releasing pages of any other memory would lose data)."""
    base = raw
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return isinstance(base, mmap.mmap)


class ResidentPages:
    """Which weights' mapped bytes were read recently, bounded in bytes (least recently used first
    out); a weight pushed out has its pages released from the process (`_release_pages`)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.released = 0  # how many times a weight's pages were handed back
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # a side and its attribution job may touch weights at once

    def touch(self, name: str, raw: np.ndarray | None) -> None:
        """`name`'s bytes are about to be read: make it the most recent; release the oldest over budget."""
        if raw is None or not _is_file_map(raw):
            return
        with self._lock:
            self._touch(name, raw)

    def _touch(self, name: str, raw: np.ndarray) -> None:
        if name in self._items:
            self._items.move_to_end(name)
            return
        self._items[name] = raw
        self.used += raw.nbytes
        while self.used > self.budget and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.used -= old.nbytes
            if _release_pages(old):
                self.released += 1

    def __contains__(self, name: str) -> bool:
        return name in self._items


class WeightCache:
    """Least-recently-used cache of dequantized weights, bounded in bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[str, Weight] = OrderedDict()
        self.hits = self.misses = 0
        self._lock = threading.RLock()

    def get(self, name: str) -> Weight | None:
        with self._lock:
            w = self._items.get(name)
            if w is not None:
                self._items.move_to_end(name)
                self.hits += 1
            else:
                self.misses += 1
            return w

    def put(self, w: Weight) -> None:
        with self._lock:
            self._put(w)

    def _put(self, w: Weight) -> None:
        if w.name in self._items:
            self.used -= self._items.pop(w.name).nbytes
        self._items[w.name] = w
        self.used += w.nbytes
        # keep at least the newest item even if it alone exceeds the budget
        while self.used > self.budget and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.used -= old.nbytes

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


class Model:
    """A GGUF model: `config`, `tensors` (the index) and `weight(name)` (dequantized on demand)."""

    def __init__(self, path: str | os.PathLike, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 resident_bytes: int = DEFAULT_RESIDENT_BYTES) -> None:
        from qdbg.gguf_file import GGUFFile

        self.path = Path(path)
        self.gguf = GGUFFile(self.path)
        where = f"{self.path.name}: "
        self.config: ModelConfig = config_from_metadata(
            self.gguf.metadata, {n: t.shape for n, t in self.gguf.tensors.items()}, where
        )
        self.cache = WeightCache(cache_bytes)
        self.resident = ResidentPages(resident_bytes)
        # matrices are held as exact float64 copies when all of them fit the budget that way (no
        # conversion per product); otherwise as float32, so twice the model fits before eviction
        n_matrix = sum(t.n_elements for t in self.gguf.tensors.values() if len(t.shape) == 2)
        self.matrices_f64 = 8 * n_matrix <= cache_bytes
        self._tokenizer: Any = None
        self._weights: dict[str, Weight] = {}

    # -- identity -------------------------------------------------------------------------
    @property
    def metadata(self):
        return self.gguf.metadata

    @property
    def tensors(self):
        return self.gguf.tensors

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)

    def qtype(self, name: str):
        return self._info(name).qtype

    def tensor_types(self) -> dict[str, str]:
        return {n: t.qtype.name for n, t in self.tensors.items()}

    def type_summary(self) -> str:
        """The file's quant mix, most common first, e.g. 'Q4_K x96, Q6_K x13, F32 x61'."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
        return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    # -- weights --------------------------------------------------------------------------
    def _info(self, name: str):
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(f"{self.path.name}: no tensor '{name}'")
        return info

    def weight(self, name: str) -> Weight:
        """The weight `name`: its raw bytes now, its dequantized values when first asked for."""
        w = self._weights.get(name)
        if w is None:
            info = self._info(name)
            w = Weight(name, info.qtype, raw=self.gguf.raw(name), shape=tuple(info.shape),
                       load=lambda: self.values(name))
            self._weights[name] = w
        self.resident.touch(name, w.raw)
        return w

    def values(self, name: str) -> np.ndarray:
        """The dequantized weight `name` (float32, numpy order), from the cache when possible."""
        w = self.cache.get(name)
        if w is not None:
            return w.values
        from qdbg.quant import dequantize

        info = self._info(name)
        raw = self.gguf.raw(name)
        try:
            values = dequantize(raw, info.qtype, info.shape)
        except QdbgError:
            raise
        except Exception as e:  # a kernel choking on bytes we validated is still our error
            raise GGUFError(f"{self.path.name}: cannot dequantize '{name}' ({info.qtype.name}): {e}") from e
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(info.shape)
        if values.ndim == 2 and self.matrices_f64:
            values = values.astype(np.float64)  # exact; every matrix product runs in float64
        values.flags.writeable = False
        self.cache.put(Weight(name=name, qtype=info.qtype, values=values, raw=raw))
        return values

    # -- tokenizer ------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from qdbg.tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_gguf(self.metadata)
        return self._tokenizer

    def close(self) -> None:
        self.gguf.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
