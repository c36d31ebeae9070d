"""Weight: one GGUF tensor as the engine sees it — its quantized bytes, and its dequantized values
on demand."""

from __future__ import annotations

from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as QT


class Weight:
    """One GGUF weight in numpy order ([n_out, n_in] for matrices).

    `raw` holds the tensor's bytes as the file stores them (what the exact kernels read).
    `values` is the dequantization, float32 (matrices may be held as an exact float64 copy);
    it is given directly or produced by `load()` the first time it is asked for, and the model's
    byte-bounded cache decides how long it is kept.
    """

    def __init__(self, name: str, qtype: QT, values: np.ndarray | None = None,
                 raw: np.ndarray | None = None, *, shape: tuple[int, ...] | None = None,
                 load: Callable[[], np.ndarray] | None = None) -> None:
        if values is None and load is None:
            raise ValueError(f"{name}: a Weight needs values or a loader")
        self.name = name
        self.qtype = QT(qtype)
        self._values = values
        self._load = load
        self.raw = raw
        self.shape = tuple(shape) if shape is not None else tuple(values.shape)  # type: ignore[union-attr]
        self._mins: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"Weight({self.name!r}, {self.qtype.name}, shape={self.shape})"

    @property
    def values(self) -> np.ndarray:
        if self._values is not None:
            return self._values
        assert self._load is not None
        return self._load()

    @property
    def nbytes(self) -> int:
        v = 0 if self._values is None else int(self._values.nbytes)
        return v + (0 if self._mins is None else int(self._mins.nbytes))

    def raw_rows(self) -> np.ndarray:
        """The bytes as rows: uint8 [n_out, row_bytes] (F32 as float32, F16/BF16 as uint16 bits)."""
        assert self.raw is not None, f"{self.name}: no raw bytes"
        n_rows = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        if self.qtype == QT.F32:
            return self.raw.view(np.float32).reshape(n_rows, -1)
        if self.qtype in (QT.F16, QT.BF16):
            return self.raw.view(np.uint16).reshape(n_rows, -1)
        return self.raw.reshape(n_rows, -1)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """GET_ROWS: float32 rows `ids` of a matrix, dequantizing only those rows when the whole
        matrix is not already dequantized (ggml dequantizes block by block, so this is exact)."""
        if self._values is not None or self.raw is None:
            return np.ascontiguousarray(self.values[ids], dtype=np.float32)
        from qdbg.quant import dequantize

        raw = self.raw_rows()
        uniq, inv = np.unique(np.asarray(ids), return_inverse=True)
        sel = np.ascontiguousarray(raw[uniq]).view(np.uint8).reshape(-1)
        vals = np.asarray(dequantize(sel, self.qtype, (len(uniq), self.shape[-1])), dtype=np.float32)
        return np.ascontiguousarray(vals.reshape(len(uniq), -1)[inv])

    def block_mins(self) -> np.ndarray:
        """Per-32-block minima m of Q4_1/Q5_1 weights, [n_out, n_in/32] float32.

        Block layout: Q4_1 = {f16 d, f16 m, u8 qs[16]} (20 B); Q5_1 = {f16 d, f16 m, u8 qh[4], u8 qs[16]} (24 B).
        """
        if self._mins is None:
            size = {QT.Q4_1: 20, QT.Q5_1: 24}[self.qtype]
            assert self.raw is not None, f"{self.name}: raw bytes needed for block minima"
            blocks = self.raw.reshape(-1, size)
            m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
            self._mins = m.reshape(self.shape[0], -1)
        return self._mins
