"""Record golden quantization data from llama.cpp (via llama-cpp-python's bundled ggml libraries).

Writes tests/golden/quant/weights.npz and tests/golden/quant/activations.npz, which
tests/test_quant.py compares qdbg.quant against. Needs llama_cpp installed (only this script
does); run it from the repo root:  python tools/record_quant_golden.py

weights.npz      x: float32 [16, 512] seeded inputs (stored, so the test needs no RNG stream)
                 q_<T>: ggml_quantize_chunk(T, x, imatrix=NULL) bytes  (what llama_model_quantize runs)
                 dq_<T>: the library's to_float (dequantize_row_*) of q_<T>
activations.npz  x: float32 [12, 1024] seeded activation rows
                 cpu_q8_0 / cpu_q8_1 / cpu_q8_K: from_float of the CPU backend (quantize_row_q8_*)
                 ref_q8_0 / ref_q8_1 / ref_q8_K: the scalar quantize_row_q8_*_ref of ggml-base
                 mat_q8_0_4x8 / mat_q8_K_4x8 / mat_q8_0_4x4: repack quantizers on rows 0..3
                 cpu_f16 / cpu_bf16: from_float of F16 / BF16
                 vdt_types, vdt_values: ggml_get_type_traits_cpu(t)->vec_dot_type for every type
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

import numpy as np

try:
    import llama_cpp
except ImportError:  # pragma: no cover - recording tool only
    sys.exit("record_quant_golden.py needs llama_cpp (llama-cpp-python) installed")
from gguf import GGMLQuantizationType as QT

LIB = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "golden", "quant")
SEED = 20240611
QUANT_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
DEQUANT_ONLY = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]

base = ctypes.CDLL(os.path.join(LIB, "libggml-base.so"))
cpu = ctypes.CDLL(os.path.join(LIB, "libggml-cpu.so"))
VP, I64 = ctypes.c_void_p, ctypes.c_int64
ROWFN = ctypes.CFUNCTYPE(None, VP, VP, I64)


class TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", I64), ("blck_size_interleave", I64),
                ("type_size", ctypes.c_size_t), ("is_quantized", ctypes.c_bool),
                ("to_float", VP), ("from_float_ref", VP)]


class TypeTraitsCpu(ctypes.Structure):
    _fields_ = [("from_float", VP), ("vec_dot", VP), ("vec_dot_type", ctypes.c_int), ("nrows", I64)]


base.ggml_quantize_chunk.restype = ctypes.c_size_t
base.ggml_quantize_chunk.argtypes = [ctypes.c_int, VP, VP, I64, I64, I64, VP]
base.ggml_row_size.restype = ctypes.c_size_t
base.ggml_row_size.argtypes = [ctypes.c_int, I64]
base.ggml_quantize_init.argtypes = [ctypes.c_int]
base.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
base.ggml_get_type_traits.argtypes = [ctypes.c_int]
cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(TypeTraitsCpu)
cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
cpu.ggml_cpu_init()


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def quantize_chunk(x: np.ndarray, t: QT) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    nrows, n = x.shape
    rs = base.ggml_row_size(int(t), n)
    out = np.zeros((nrows, rs), np.uint8)
    base.ggml_quantize_init(int(t))
    base.ggml_quantize_chunk(int(t), _ptr(x), _ptr(out), 0, nrows, n, None)
    return out


def to_float(raw: np.ndarray, t: QT, n: int) -> np.ndarray:
    fn = ROWFN(base.ggml_get_type_traits(int(t)).contents.to_float)
    raw = np.ascontiguousarray(raw)
    out = np.zeros((raw.shape[0], n), np.float32)
    for i in range(raw.shape[0]):
        fn(_ptr(raw[i]), _ptr(out[i]), n)
    return out


def per_row(fn: ROWFN, x: np.ndarray, row_bytes: int) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros((x.shape[0], row_bytes), np.uint8)
    for i in range(x.shape[0]):
        fn(_ptr(x[i]), _ptr(out[i]), x.shape[1])
    return out


def mat4(name: str, x: np.ndarray, nbytes: int) -> np.ndarray:
    fn = ROWFN(ctypes.cast(getattr(cpu, name), VP).value)
    x = np.ascontiguousarray(x[:4], np.float32)
    out = np.zeros(nbytes, np.uint8)
    fn(_ptr(x), _ptr(out), x.shape[1])
    return out


def weight_inputs(rng: np.random.Generator) -> np.ndarray:
    """16 rows x 512: two rows of each style (normal, heavy tail, zero/constant blocks, tiny,
    mixed signs, positive offset, block-wise scales, exact ties)."""
    n = 512
    rows = []
    for _ in range(2):
        rows.append(rng.standard_normal(n))
        rows.append(rng.standard_t(2, n))
        r = rng.standard_normal(n); r[:256] = 0; r[256:288] = 0.5; r[300:316] = -3.0
        rows.append(r)
        rows.append(rng.standard_normal(n) * 1e-6)       # fp16-subnormal scales
        rows.append(rng.uniform(-1, 1, n) * rng.choice([-1, 1], n))
        rows.append(np.abs(rng.standard_normal(n)) + 2.0)  # all-positive: min > 0 branches
        rows.append(rng.standard_normal(n) * np.repeat(10.0 ** rng.integers(-4, 3, n // 32), 32))
        rows.append(rng.integers(-16, 16, n) * 0.25)      # many exact rounding ties
    return np.array(rows, dtype=np.float32)


def activation_inputs(rng: np.random.Generator) -> np.ndarray:
    """12 rows x 1024 activation-like rows, with ties and degenerate blocks planted."""
    n = 1024
    x = np.concatenate([rng.standard_normal((4, n)), rng.standard_t(3, (4, n)) * 5,
                        rng.standard_normal((4, n)) * np.repeat(10.0 ** rng.integers(-3, 3, (4, n // 32)), 32, axis=1)])
    x = x.astype(np.float32)
    x[0, 512:544] = np.arange(-15.5, 16.5); x[0, 512] = 127           # id = 1: exact .5 ties
    x[1, 5], x[1, 9] = -300.0, 300.0                                  # +-amax in one Q8_K block
    x[1, 256 + 7], x[1, 256 + 100] = -700.0, 700.0
    x[2, 0:256] = 0.0                                                 # all-zero Q8_K block
    x[3, 0:32] = np.arange(32) * 0.1 - 1.55
    x[4, 0:32] = 1e-39                                                # subnormal block
    x[5, 32:64] = 0.25
    return x


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    meta = {"seed": SEED, "llama_cpp_python": llama_cpp.__version__, "numpy": np.__version__,
            "generator": "numpy.random.default_rng(seed): weight_inputs then activation_inputs"}

    x = weight_inputs(rng)
    w: dict[str, np.ndarray] = {"x": x, "meta": np.array(json.dumps(meta))}
    for name in QUANT_TYPES + DEQUANT_ONLY:
        raw = quantize_chunk(x, QT[name])
        w[f"q_{name}"] = raw
        w[f"dq_{name}"] = to_float(raw, QT[name], x.shape[1])
    np.savez_compressed(os.path.join(OUT, "weights.npz"), **w)

    a = activation_inputs(rng)
    n = a.shape[1]
    acts: dict[str, np.ndarray] = {"x": a, "meta": np.array(json.dumps(meta))}
    for name, t, nbytes in (("q8_0", QT.Q8_0, 34), ("q8_1", QT.Q8_1, 36), ("q8_K", QT.Q8_K, 292)):
        bs = 256 if t == QT.Q8_K else 32
        cpu_fn = ROWFN(ctypes.cast(getattr(cpu, f"quantize_row_{name}"), VP).value)
        ref_fn = ROWFN(ctypes.cast(getattr(base, f"quantize_row_{name}_ref"), VP).value)
        acts[f"cpu_{name}"] = per_row(cpu_fn, a, n // bs * nbytes)
        acts[f"ref_{name}"] = per_row(ref_fn, a, n // bs * nbytes)
    acts["mat_q8_0_4x8"] = mat4("ggml_quantize_mat_q8_0_4x8", a, n // 32 * 136)
    acts["mat_q8_0_4x4"] = mat4("ggml_quantize_mat_q8_0_4x4", a, n // 32 * 136)
    acts["mat_q8_K_4x8"] = mat4("ggml_quantize_mat_q8_K_4x8", a, n // 256 * 1168)
    for name, t in (("f16", QT.F16), ("bf16", QT.BF16)):
        fn = ROWFN(cpu.ggml_get_type_traits_cpu(int(t)).contents.from_float)
        acts[f"cpu_{name}"] = per_row(fn, a, n * 2)
    types = [t for t in QT]
    acts["vdt_types"] = np.array([int(t) for t in types], np.int32)
    acts["vdt_values"] = np.array([cpu.ggml_get_type_traits_cpu(int(t)).contents.vec_dot_type
                                   for t in types], np.int32)
    np.savez_compressed(os.path.join(OUT, "activations.npz"), **acts)
    for f in ("weights.npz", "activations.npz"):
        print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")


if __name__ == "__main__":
    main()
