"""The arithmetic that does not reproduce a build: `f32` (dequantized weights, float32
activations: the weights' error alone) and `ggml` (llama.cpp's activation rounding with exact
integer dot products summed in float64, about 1e-7 from llama.cpp per op). `ggml` is not a user
mode any more (exact mode is faster); it is exact mode's fallback for weight types without an
exact kernel."""

from __future__ import annotations

import numpy as np

from qdbg.engine import matmul as mm
from qdbg.engine import ops
from qdbg.engine.weights import Weight
from qdbg.numerics.base import Numerics


class _Float64Sums(Numerics):
    """Matrix and attention products as float64 sums over (rounded) operands; `name` is the
    qdbg.engine.matmul mode that says which roundings apply."""

    def matmul(self, x: np.ndarray, w: Weight) -> np.ndarray:
        return mm.matmul(x, w, self.name)

    def attn_scores(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return mm.attn_scores(q, k, self.name)

    def attn_values(self, p: np.ndarray, v: np.ndarray) -> np.ndarray:
        return mm.attn_values(p, v, self.name)


class F32Numerics(_Float64Sums):
    """The error of the weights alone: float32 activations, float64 dot products, no F16 cache."""

    name = "f32"
    kv_f16 = False

    def describe(self) -> str:
        return "f32: dequantized weights, float32 activations (the weights' error alone)"

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return ops.geglu(gate, up, exact_f32=True)


class GgmlNumerics(_Float64Sums):
    """llama.cpp's roundings (8-bit activations, F16 cache and attention operands, GELU table)
    with exact integer dot products summed in float64: close to a llama.cpp build, not equal."""

    name = "ggml"

    def describe(self) -> str:
        return "ggml: llama.cpp's roundings, float64 sums (approximate: ~1e-7 per op)"
