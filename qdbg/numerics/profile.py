"""Build profiles: which llama.cpp build a numeric mode reproduces, named once.

llama.cpp's results depend on the build: the SIMD width and instruction set pick other kernels
that add in another order, and an ulp of difference in front of an 8-bit activation quantization
grows through the layers. `exact` mode therefore reproduces one named build; another build
(AVX-512, ARM NEON, a GPU backend, another ggml version) is a new profile, not a flag.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuildProfile:
    """One llama.cpp CPU build, as `llama_print_system_info()` and the package versions name it."""

    id: str                 # short stable id, used in traces and JSON
    llama_cpp_python: str   # the package version that ships it
    ggml: str               # ggml version of that llama.cpp
    isa: str                # what the CPU backend was compiled for
    features: tuple[str, ...]  # compile-time paths that change the arithmetic

    @property
    def label(self) -> str:
        """Short name for headers, e.g. 'llama.cpp 0.3.36 x86-64 AVX2'."""
        return f"llama.cpp {self.llama_cpp_python} {self.isa.split(' CPU')[0].split(',')[0]}" + (
            " AVX2" if "AVX2" in self.isa else "")

    def describe(self) -> str:
        return (f"llama.cpp of llama-cpp-python {self.llama_cpp_python} (ggml {self.ggml}), "
                f"{self.isa}, {', '.join(self.features)}")

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "llama_cpp_python": self.llama_cpp_python, "ggml": self.ggml,
                "isa": self.isa, "features": list(self.features), "label": self.label,
                "description": self.describe()}


# The portable wheel: llama_print_system_info() says
# "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 |
#  OPENMP = 1 | REPACK = 1" (no AVX512 even on CPUs that have it).
X86_AVX2_0336 = BuildProfile(
    id="llama.cpp-0.3.36-x86_64-avx2",
    llama_cpp_python="0.3.36",
    ggml="0.25.3",
    isa="x86-64 CPU backend, AVX2+FMA+F16C (no AVX-512)",
    features=("llamafile tinyBLAS", "CPU weight repacking", "tiled K-quant matmul",
              "F16 KV cache"),
)

PROFILES = {p.id: p for p in (X86_AVX2_0336,)}
