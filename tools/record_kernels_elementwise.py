"""Record the elementwise-kernel goldens from the installed llama.cpp (llama-cpp-python wheel).

    python tools/record_kernels_elementwise.py [--out tests/golden/kernels]

Runs every case of tests/kernels_elementwise_cases.py as a one-op ggml graph (tools/ggml_oracle.py)
with 1 thread, checks that 2 and 4 threads give the same bits, and writes
  elementwise.json  build info, per case: params, input sha256, output sha256, shape
  elementwise.npz   full outputs of the small cases (<= 512 values), for diagnosis
plus the sha256 of the wheel's ggml_table_gelu_f16 (read from libggml-cpu.so after ggml_cpu_init).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import ggml_oracle as go  # noqa: E402
import kernels_elementwise_cases as kc  # noqa: E402

SMALL = 512


def run(case: dict, a: dict[str, np.ndarray], n_threads: int) -> np.ndarray:
    """The case's op through the wheel's ggml."""
    op, t = case["op"], n_threads
    if op == "softmax":
        return go.soft_max_ext(a["kq"], a.get("mask"), case["scale"], case["max_bias"],
                               mask_type=case.get("mask_type", "F32"), n_threads=t)
    if op in ("swiglu", "geglu"):
        return go.glu(a["gate"], a["up"], op, n_threads=t)
    if op == "rope":
        return go.rope_ext(a["x"], a["pos"], case["n_dims"], 2 if case["neox"] else 0,
                           case["base"], case["freq_scale"], n_threads=t)
    if op == "rms_norm":
        y = go.rms_norm(a["x"], case["eps"], n_threads=t)
        return go.mul(y, a["w"], n_threads=t) if "w" in a else y
    if op == "softcap":  # llama.cpp: scale(1/cap) -> tanh -> scale(cap), three graph nodes
        c = np.float32(case["cap"])
        y = go.scale(a["x"], float(np.float32(1.0) / c), n_threads=t)
        return go.scale(go.unary(y, "tanh", n_threads=t), float(c), n_threads=t)
    if op == "scale":
        return go.scale(a["x"], case["s"], n_threads=t)
    if op == "add":
        return go.add(a["a"], a["b"], n_threads=t)
    raise ValueError(op)


def gelu_table_sha() -> str:
    go.glu(np.ones((1, 8), np.float32), np.ones((1, 8), np.float32), "geglu")  # ggml_cpu_init ran
    t = (ctypes.c_uint16 * 65536).in_dll(go._cpu, "ggml_table_gelu_f16")
    return kc.digest(np.frombuffer(t, np.uint16))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "golden", "kernels"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    records, small = [], {}
    thread_diffs = 0
    for case in kc.cases():
        a = kc.inputs(case)
        y = np.ascontiguousarray(run(case, a, 1), dtype=np.float32)
        for t in (2, 4):
            if not np.array_equal(y.view(np.uint32), run(case, a, t).view(np.uint32)):
                thread_diffs += 1
                print(f"{case['name']}: {t} threads change bits")
        records.append(dict(case, in_sha={k: kc.digest(v) for k, v in sorted(a.items())},
                            out_sha=kc.digest(y), shape=list(y.shape)))
        if y.size <= SMALL:
            small[case["name"]] = y
    info = go.system_info()
    doc = dict(about="elementwise kernels recorded from llama.cpp's CPU backend; see "
                     "tools/record_kernels_elementwise.py", build=info,
               threads_checked=[1, 2, 4], thread_diffs=thread_diffs,
               gelu_table_sha=gelu_table_sha(), cases=records)
    with open(os.path.join(args.out, "elementwise.json"), "w") as f:
        json.dump(doc, f, indent=1)
    np.savez_compressed(os.path.join(args.out, "elementwise.npz"), **small)
    print(f"{len(records)} cases, {len(small)} stored in full, thread diffs: {thread_diffs}")


if __name__ == "__main__":
    main()
