"""Record llama.cpp's MUL_MAT outputs for the legacy quant types -> tests/golden/kernels/legacy.npz.

Drives the installed wheel's ggml through ctypes: one MUL_MAT graph per case, the weight in a plain
CPU buffer or in the CPU_REPACK buffer, computed by the CPU backend with 1 thread and again with 4
threads (the script stops if the two differ). Inputs come from seeds (`CASES`, `case_inputs` in
tests/test_kernels_legacy.py), so the golden file holds only the case table and the outputs
(one flat array, case after case). tools/ggml_oracle.py (written later) offers the same driver.

    python tools/record_kernels_legacy.py            # writes tests/golden/kernels/legacy.npz
"""

from __future__ import annotations

import ctypes as C
import json
import os
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_kernels_legacy import CASES, case_inputs  # noqa: E402

OUT = ROOT / "tests" / "golden" / "kernels" / "legacy.npz"


class _InitParams(C.Structure):
    _fields_ = [("mem_size", C.c_size_t), ("mem_buffer", C.c_void_p), ("no_alloc", C.c_bool)]


def _libs() -> tuple[C.CDLL, C.CDLL]:
    import llama_cpp
    lib = Path(os.path.dirname(llama_cpp.__file__)) / "lib"
    base = C.CDLL(str(lib / "libggml-base.so"), mode=C.RTLD_GLOBAL)
    cpu = C.CDLL(str(lib / "libggml-cpu.so"), mode=C.RTLD_GLOBAL)
    P = C.c_void_p
    for name, res, args in [
        ("ggml_init", P, [_InitParams]), ("ggml_free", None, [P]),
        ("ggml_tensor_overhead", C.c_size_t, []), ("ggml_graph_overhead", C.c_size_t, []),
        ("ggml_new_tensor_2d", P, [P, C.c_int, C.c_int64, C.c_int64]),
        ("ggml_mul_mat", P, [P, P, P]), ("ggml_new_graph", P, [P]),
        ("ggml_build_forward_expand", None, [P, P]),
        ("ggml_backend_cpu_buffer_type", P, []),
        ("ggml_backend_alloc_ctx_tensors_from_buft", P, [P, P]),
        ("ggml_backend_buffer_free", None, [P]),
        ("ggml_backend_tensor_set", None, [P, P, C.c_size_t, C.c_size_t]),
        ("ggml_backend_tensor_get", None, [P, P, C.c_size_t, C.c_size_t]),
        ("ggml_backend_graph_compute", C.c_int, [P, P]), ("ggml_backend_free", None, [P])]:
        f = getattr(base, name)
        f.restype, f.argtypes = res, args
    for name, res, args in [("ggml_backend_cpu_init", P, []),
                            ("ggml_backend_cpu_set_n_threads", None, [P, C.c_int]),
                            ("_Z35ggml_backend_cpu_repack_buffer_typev", P, [])]:
        f = getattr(cpu, name)
        f.restype, f.argtypes = res, args
    return base, cpu


def ggml_mul_mat(raw: np.ndarray, qtype: QT, n_in: int, x: np.ndarray, repacked: bool,
                 n_threads: int) -> np.ndarray:
    """llama.cpp's MUL_MAT(weight raw [n_out, row_bytes] of qtype, x f32 [n_tok, n_in])."""
    base, cpu = _libs()
    raw = np.ascontiguousarray(raw)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_out, n_tok = raw.shape[0], x.shape[0]
    mem = 8 * base.ggml_tensor_overhead() + base.ggml_graph_overhead() + 4096
    ctx_w = base.ggml_init(_InitParams(mem, None, True))
    ctx_x = base.ggml_init(_InitParams(mem, None, True))
    w = base.ggml_new_tensor_2d(ctx_w, int(qtype), n_in, n_out)
    xt = base.ggml_new_tensor_2d(ctx_x, int(QT.F32), n_in, n_tok)
    y = base.ggml_mul_mat(ctx_x, w, xt)
    buft_w = cpu._Z35ggml_backend_cpu_repack_buffer_typev() if repacked else base.ggml_backend_cpu_buffer_type()
    buf_w = base.ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, buft_w)
    buf_x = base.ggml_backend_alloc_ctx_tensors_from_buft(ctx_x, base.ggml_backend_cpu_buffer_type())
    base.ggml_backend_tensor_set(w, raw.ctypes.data, 0, raw.nbytes)
    base.ggml_backend_tensor_set(xt, x.ctypes.data, 0, x.nbytes)
    gf = base.ggml_new_graph(ctx_x)
    base.ggml_build_forward_expand(gf, y)
    be = cpu.ggml_backend_cpu_init()
    cpu.ggml_backend_cpu_set_n_threads(be, n_threads)
    if base.ggml_backend_graph_compute(be, gf) != 0:
        raise RuntimeError("ggml_backend_graph_compute failed")
    out = np.empty((n_tok, n_out), np.float32)
    base.ggml_backend_tensor_get(y, out.ctypes.data, 0, out.nbytes)
    base.ggml_backend_free(be)
    base.ggml_backend_buffer_free(buf_w)
    base.ggml_backend_buffer_free(buf_x)
    base.ggml_free(ctx_w)
    base.ggml_free(ctx_x)
    return out


def main() -> None:
    outs = []
    for case in CASES:
        raw, x = case_inputs(case)
        qt = QT[case["qtype"]]
        y1 = ggml_mul_mat(raw, qt, case["n_in"], x, case["repacked"], 1)
        y4 = ggml_mul_mat(raw, qt, case["n_in"], x, case["repacked"], 4)
        if not np.array_equal(y1.view(np.uint32), y4.view(np.uint32)):
            raise SystemExit(f"thread count changes bits: {case}")
        outs.append(y1.reshape(-1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, cases=np.array(json.dumps(CASES)), y=np.concatenate(outs))
    print(f"{len(CASES)} cases -> {OUT} ({OUT.stat().st_size} bytes); 1 and 4 threads agree")


if __name__ == "__main__":
    main()
