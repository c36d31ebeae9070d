"""Weight: a dequantized weight tensor together with what the ggml-mode matmul needs to know."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as QT


@dataclass(eq=False)
class Weight:
    """One GGUF weight in numpy order ([n_out, n_in]).

    `values` is the dequantization: float32 for vectors; for matrices it may be held as float64
    (an exact copy of the float32 values), since every matrix product accumulates in float64.
    """

    name: str
    qtype: QT
    values: np.ndarray
    raw: np.ndarray | None = None          # the quantized bytes, for block minima (Q4_1/Q5_1)
    _mins: np.ndarray | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes) + (0 if self._mins is None else int(self._mins.nbytes))

    def block_mins(self) -> np.ndarray:
        """Per-32-block minima m of Q4_1/Q5_1 weights, [n_out, n_in/32] float32.

        Block layout: Q4_1 = {f16 d, f16 m, u8 qs[16]} (20 B); Q5_1 = {f16 d, f16 m, u8 qh[4], u8 qs[16]} (24 B).
        """
        if self._mins is None:
            size = {QT.Q4_1: 20, QT.Q5_1: 24}[self.qtype]
            assert self.raw is not None, f"{self.name}: raw bytes needed for block minima"
            blocks = self.raw.reshape(-1, size)
            m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
            self._mins = m.reshape(self.values.shape[0], -1)
        return self._mins
