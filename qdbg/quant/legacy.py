"""Legacy block quantizers (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the float formats (F32, F16, BF16).

gguf-py's `gguf.quants.quantize` reproduces llama.cpp's `quantize_row_*_ref` (what
`ggml_quantize_chunk` / `llama_model_quantize` run for these types without an importance
matrix) byte for byte, and its F16/BF16 conversions match ggml's round-to-nearest-even for every
finite value; tests/test_quant.py checks all of this against golden bytes recorded from the
library. So this module only adapts shapes and silences numpy's cast warnings.
"""

from __future__ import annotations

import warnings

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

LEGACY_TYPES = (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0)
FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)


def quantize_legacy(rows: np.ndarray, qtype: QT) -> np.ndarray:
    """Float32 rows [nrows, n] (n a multiple of the block size) -> uint8 [nrows, row_bytes]."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if qtype == QT.F32:
        out = rows.copy()
    else:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # casts of inf/nan, as C's UB does
            out = np.asarray(gq.quantize(rows, qtype))
    return np.ascontiguousarray(out).view(np.uint8).reshape(rows.shape[0], -1)
