"""`exact`: llama.cpp's CPU backend of one named build, bit for bit (profile X86_AVX2_0336).

Each method runs the kernel that build runs for the same operands (qdbg.numerics.kernels: the
mul_mat dispatch — repacked weights, the tiled K-quant matmul, tinyBLAS, vec_dot — the SIMD exp
of softmax and SiLU, libm's sincosf in RoPE, the three flash-attention kernels). Weight types
without an exact kernel fall back to the approximate `ggml` arithmetic with a one-line warning
naming the tensor.
"""

from __future__ import annotations

import warnings

import numpy as np
from gguf import GGMLQuantizationType as QT

from qdbg.engine.weights import Weight
from qdbg.numerics.base import Numerics, RunSettings
from qdbg.numerics.profile import X86_AVX2_0336
from qdbg.numerics.reference import GgmlNumerics

F32 = np.float32
FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)
LEGACY_TYPES = (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0)
K_TYPES = (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)
EXACT_TYPES = FLOAT_TYPES + LEGACY_TYPES + K_TYPES
# types this build keeps in the CPU_REPACK buffer on AVX2 (ggml_repack_get_optimal_repack_type)
REPACK_TYPES = (QT.Q4_0, QT.Q4_K, QT.IQ4_NL)


class ApproximateWarning(UserWarning):
    """A tensor ran through approximate arithmetic inside exact mode (no exact kernel for its type)."""


def is_repacked(w: Weight) -> bool:
    """Whether a MUL_MAT reads this weight repacked (interleaved 8 rows, CPU_REPACK buffer): a
    matrix of a repackable type whose row count is a multiple of 8. A tied token_embd is read
    plain by GET_ROWS but through a repacked duplicate by the output MUL_MAT, so only the use
    decides, and every use that reaches `matmul` is a MUL_MAT."""
    return w.qtype in REPACK_TYPES and len(w.shape) == 2 and w.shape[0] % 8 == 0


def _pad_cells(x: np.ndarray, n: int, axis: int, value: float = 0.0) -> np.ndarray:
    if x.shape[axis] == n:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - x.shape[axis])
    return np.pad(x, pad, constant_values=value)


def _f16_bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


class ExactNumerics(Numerics):
    """Bit-exact llama.cpp arithmetic for `profile`; see the module docstring."""

    name = "exact"
    profile = X86_AVX2_0336

    def __init__(self, settings: RunSettings | None = None) -> None:
        super().__init__(settings)
        self._approx = GgmlNumerics(self.settings)
        self.approximated: set[str] = set()

    def describe(self) -> str:
        return f"exact: {self.profile.describe()}"

    # -- matrix products ---------------------------------------------------------------------
    def matmul(self, x: np.ndarray, w: Weight) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=F32)
        if w.qtype not in EXACT_TYPES or w.raw is None:
            if w.name not in self.approximated:
                self.approximated.add(w.name)
                warnings.warn(f"{w.name}: no exact kernel for {w.qtype.name}; this tensor runs in "
                              f"approximate (ggml) arithmetic", ApproximateWarning, stacklevel=2)
            return self._approx.matmul(x, w)
        n_in = w.shape[-1]
        if w.qtype in K_TYPES:
            from qdbg.numerics.kernels.kquants import mul_mat_kquant

            return mul_mat_kquant(w.raw_rows(), w.qtype, n_in, x, is_repacked(w))
        if w.qtype in LEGACY_TYPES:
            from qdbg.numerics.kernels.legacy import mul_mat_legacy

            return mul_mat_legacy(w.raw_rows(), w.qtype, n_in, x, is_repacked(w))
        from qdbg.numerics.kernels.floats import mul_mat_float

        return mul_mat_float(w.raw_rows(), w.qtype, x)

    # -- attention -----------------------------------------------------------------------------
    def kv_cells(self, n_used: int) -> int:
        """llama_kv_cache::get_n_kv: the used cells rounded up to 256, at least 256, at most the
        (256-padded) context."""
        pad = 256
        return min(self.settings.n_ctx_padded, max(pad, -(-n_used // pad) * pad))

    def attn_scores(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        from qdbg.numerics.kernels.floats import mul_mat_f16_heads

        n_kv = k.shape[0]
        cells = self.kv_cells(n_kv)
        a = _f16_bits(_pad_cells(k, cells, 0).transpose(1, 0, 2))      # [n_head_kv, cells, hd]
        b = np.ascontiguousarray(q.transpose(1, 0, 2), dtype=F32)       # [n_head, n_tok, hd]
        kq = mul_mat_f16_heads(a, b, b_contiguous=False)                 # [n_head, n_tok, cells]
        return kq if cells == n_kv else np.ascontiguousarray(kq[..., :n_kv])

    def softmax(self, kq: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
        from qdbg.numerics.kernels.elementwise import softmax_ext

        n_kv = kq.shape[-1]
        cells = self.kv_cells(n_kv)
        p = softmax_ext(_pad_cells(kq, cells, 2), _pad_cells(mask, cells, 1, -np.inf), scale)
        return p if cells == n_kv else np.ascontiguousarray(p[..., :n_kv])

    def attn_values(self, p: np.ndarray, v: np.ndarray) -> np.ndarray:
        from qdbg.numerics.kernels.floats import mul_mat_f16_heads

        n_kv = v.shape[0]
        cells = self.kv_cells(n_kv)
        a = _f16_bits(_pad_cells(v, cells, 0).transpose(1, 2, 0))      # V^T: [n_head_kv, hd, cells]
        b = np.ascontiguousarray(_pad_cells(p, cells, 2), dtype=F32)    # [n_head, n_tok, cells]
        o = mul_mat_f16_heads(a, b, b_contiguous=True)                   # [n_head, n_tok, hd]
        return np.ascontiguousarray(o.transpose(1, 0, 2)).reshape(p.shape[1], -1)

    def flash_attn(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray,
                   scale: float) -> np.ndarray:
        from qdbg.numerics.kernels.flash_attn import flash_attn_ext

        cells = self.kv_cells(k.shape[0])
        return flash_attn_ext(np.ascontiguousarray(q, dtype=F32),
                              _f16_bits(_pad_cells(k, cells, 0)), _f16_bits(_pad_cells(v, cells, 0)),
                              _pad_cells(mask, cells, 1, -np.inf), float(scale),
                              n_threads=self.settings.n_threads)

    # -- elementwise ---------------------------------------------------------------------------
    def rope_cache(self, positions: np.ndarray, n_rot: int, base: float, freq_scale: float):
        from qdbg.numerics.kernels import elementwise as ew

        return ew.rope_cache(positions, n_rot, base, freq_scale)

    def rope(self, x: np.ndarray, cache, n_rot: int, neox: bool) -> np.ndarray:
        from qdbg.numerics.kernels import elementwise as ew

        cos, sin = cache
        return ew.rope(x, cos, sin, n_rot, neox)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        from qdbg.numerics.kernels.elementwise import swiglu

        return swiglu(gate, up)

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        from qdbg.numerics.kernels.elementwise import geglu

        return geglu(gate, up)

    def softcap(self, x: np.ndarray, cap: float) -> np.ndarray:
        from qdbg.numerics.kernels.elementwise import softcap

        return softcap(x, cap)


def coverage(tensors: dict[str, tuple[QT, tuple[int, ...]]]) -> dict[str, object]:
    """How exact mode runs a model's matrices: {profile, repacked: [...], approximate: [...]}.

    `tensors` maps a tensor name to (type, numpy shape). Matrices of a type without an exact
    kernel run approximately (and are named); repacked ones are those llama.cpp keeps in
    its CPU_REPACK buffer.
    """
    repacked, approx = [], []
    for name, (qt, shape) in tensors.items():
        if len(shape) != 2:
            continue
        probe = Weight(name, qt, np.empty(0, F32), shape=shape)
        if qt not in EXACT_TYPES:
            approx.append(f"{name} ({QT(qt).name})")
        elif is_repacked(probe):
            repacked.append(name)
    return {"profile": X86_AVX2_0336.to_json(), "repacked": repacked, "approximate": approx}
