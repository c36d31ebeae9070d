"""Numerics: how the engine's arithmetic is done, one object per mode.

`exact` reproduces one named llama.cpp CPU build bit for bit (see `qdbg.numerics.profile`);
`f32` keeps activations in float32 with dequantized weights (the error of the weights alone).
Kernels that must match llama.cpp's float order live in `qdbg.numerics.kernels` (numba).
"""

from __future__ import annotations



from qdbg.errors import UsageError
from qdbg.numerics.base import Numerics, RunSettings
from qdbg.numerics.exact import ExactNumerics
from qdbg.numerics.profile import PROFILES, X86_AVX2_0336, BuildProfile
from qdbg.numerics.reference import F32Numerics, GgmlNumerics

# the modes users choose from
MODES: dict[str, type[Numerics]] = {"exact": ExactNumerics, "f32": F32Numerics}
# `ggml` (llama.cpp's roundings, float64 sums; ~1e-7 per op from llama.cpp) is no longer offered:
# exact mode is faster (BENCHMARKS.md). It remains exact mode's fallback for weight types without an
# exact kernel, and programs and tests may still ask for it by name.
_INTERNAL: dict[str, type[Numerics]] = {**MODES, "ggml": GgmlNumerics}
DEFAULT_MODE = "exact"

__all__ = ["BuildProfile", "DEFAULT_MODE", "ExactNumerics", "F32Numerics", "GgmlNumerics", "MODES",
           "Numerics", "PROFILES", "RunSettings", "X86_AVX2_0336", "make_numerics"]


def make_numerics(mode: "str | Numerics" = DEFAULT_MODE, settings: RunSettings | None = None) -> Numerics:
    """The Numerics object of a mode name (or the object itself, passed through)."""
    if isinstance(mode, Numerics):
        return mode
    cls = _INTERNAL.get(mode)
    if cls is None:
        raise UsageError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
    return cls(settings)
