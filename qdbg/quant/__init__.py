"""qdbg's quantization kernels: llama.cpp-exact weight quantizers and CPU activation quantizers.

- `quantize(data, qtype)`: float32 rows -> GGUF block bytes, byte-identical with llama.cpp's
  `ggml_quantize_chunk(type, ..., imatrix=NULL)` (what `llama_model_quantize` runs without an
  importance matrix) for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
- `dequantize(raw, qtype, shape)`: GGUF block bytes -> float32 via gguf-py (bit-identical with
  ggml's `dequantize_row_*` for the types the golden tests cover).
- activation side (see qdbg.quant.activations): VEC_DOT_TYPE, round_trip, q8_1_sums and the
  exact (q, d) quantizers of the CPU matmul.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

from qdbg.errors import QdbgError, UnsupportedError
from qdbg.quant.activations import (VEC_DOT_TYPE, q8_1_sums, quantize_q8_0, quantize_q8_1,
                                    quantize_q8_K, round_trip)
from qdbg.quant.kquants import quantize_k
from qdbg.quant.legacy import FLOAT_TYPES, LEGACY_TYPES, quantize_legacy

__all__ = ["QUANTIZE_TYPES", "VEC_DOT_TYPE", "block_info", "dequantize", "q8_1_sums", "quantize",
           "quantize_q8_0", "quantize_q8_1", "quantize_q8_K", "round_trip", "row_bytes"]

K_TYPES = (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)
QUANTIZE_TYPES = FLOAT_TYPES + LEGACY_TYPES + K_TYPES
# gguf-py's table says 40 bytes for Q8_1 (its old float layout); ggml's block_q8_1 is fp16 d, s
_SIZES = {**GGML_QUANT_SIZES, QT.Q8_1: (32, 36)}


def _qtype(qtype: object) -> QT:
    try:
        return QT(qtype)
    except ValueError:
        raise UnsupportedError(f"unknown ggml type {qtype!r}") from None


def block_info(qtype: QT) -> tuple[int, int]:
    """(values per block, bytes per block) of a ggml type."""
    qt = _qtype(qtype)
    if qt not in _SIZES:
        raise UnsupportedError(f"no block size known for ggml type {qt.name}")
    return _SIZES[qt]


def row_bytes(qtype: QT, n: int) -> int:
    """Bytes of one row of n values; QdbgError unless n is a multiple of the block size."""
    bs, ts = block_info(qtype)
    if n <= 0 or n % bs:
        raise QdbgError(f"row length {n} is not a positive multiple of the {_qtype(qtype).name} block size {bs}")
    return n // bs * ts


def quantize(data: np.ndarray, qtype: QT) -> np.ndarray:
    """Float rows [..., n] -> uint8 [..., row_bytes(qtype, n)], byte-identical with llama.cpp.

    Raises UnsupportedError naming the type when it has no quantizer here, QdbgError when n is
    not a multiple of the type's block size or the data is not a real-valued array.
    """
    qt = _qtype(qtype)
    if qt not in QUANTIZE_TYPES:
        raise UnsupportedError(f"quantizing to {qt.name} is not supported "
                               f"(supported: {', '.join(t.name for t in QUANTIZE_TYPES)})")
    arr = np.asarray(data)
    if arr.ndim == 0 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise QdbgError(f"cannot quantize to {qt.name}: expected a real array of rows, got dtype "
                        f"{arr.dtype} with shape {arr.shape}")
    n = arr.shape[-1]
    nbytes = row_bytes(qt, n)
    rows = np.ascontiguousarray(arr.reshape(-1, n), dtype=np.float32)
    if rows.shape[0] == 0:
        out = np.zeros((0, nbytes), np.uint8)
    elif qt in K_TYPES:
        out = quantize_k(rows, qt.name)
    else:
        out = quantize_legacy(rows, qt)
    return out.reshape(*arr.shape[:-1], nbytes)


_CHUNK_BYTES = 1 << 20


def dequantize(raw: np.ndarray, qtype: QT, shape: tuple[int, ...]) -> np.ndarray:
    """GGUF block bytes -> float32 array of `shape` (last axis = values per row), via gguf-py.

    Raises UnsupportedError naming the type when gguf-py cannot dequantize it, QdbgError when the
    byte count does not match the shape.
    """
    qt = _qtype(qtype)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 0 for s in shape):
        raise QdbgError(f"bad shape {shape} for a {qt.name} tensor")
    nbytes = row_bytes(qt, shape[-1]) if shape[-1] else 0
    nrows = int(np.prod(shape[:-1], dtype=np.int64))
    buf = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if buf.size != nrows * nbytes:
        raise QdbgError(f"{qt.name} tensor of shape {shape} needs {nrows * nbytes} bytes, got {buf.size}")
    if buf.size == 0:
        return np.zeros(shape, np.float32)
    rows = buf.reshape(nrows, nbytes)
    traits = gq._type_traits.get(qt)
    if traits is None:
        try:
            out = gq.dequantize(rows, qt)
        except NotImplementedError:
            raise UnsupportedError(f"dequantizing {qt.name} is not supported") from None
        return np.asarray(out, dtype=np.float32).reshape(shape)
    # gguf-py's own block kernels, applied to large chunks of rows at once: gq.dequantize runs
    # them over groups of 16 rows, which costs more in splitting than in arithmetic.
    traits.init_grid()
    out = np.empty((nrows, shape[-1]), np.float32)
    step = max(1, _CHUNK_BYTES // max(nbytes, 1))
    with np.errstate(invalid="ignore", over="ignore"):  # inf/nan scales give inf/nan, as in ggml
        for i in range(0, nrows, step):
            out[i:i + step] = traits.dequantize_rows(rows[i:i + step])
    return out.reshape(shape)
