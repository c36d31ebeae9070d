"""Check tools/ggml_oracle.py against the fidelity goldens (tests/golden/fidelity).

Every weight MUL_MAT (placed plain or in CPU_REPACK as the recording says), kq/kqv, SOFT_MAX, ROPE,
RMS_NORM and SWIGLU/GEGLU node of every step, fed llama.cpp's recorded inputs, must come out of the
one-op oracle bit for bit as llama.cpp computed it inside the whole model. Also prints whether
repacked and plain Q4_K matmuls agree and whether 2 threads change any bit.

Usage: python tools/check_ggml_oracle.py [golden stem ...]   (default: every fidelity golden)
"""

from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]
import ggml_oracle as o  # noqa: E402
from goldens import Golden, golden_files, load_golden  # noqa: E402

from qdbg.model import Model  # noqa: E402
from qdbg.synth import SynthSpec, write_gguf  # noqa: E402


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32).reshape(a.shape)
    return np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _f(i: int) -> float:
    return struct.unpack("f", struct.pack("i", i))[0]


def check(g: Golden, m: Model) -> dict[str, list[int]]:
    """{kind: [n_equal, n_checked]} over all nodes of all steps."""
    w_info, res = g.manifest["weights"], {}
    for si, st in enumerate(g.steps):
        t = lambda key: g.tensor_by_key(si, key)  # noqa: E731
        for n in st.nodes:
            want, got = t(n.key), None
            if n.op == "MUL_MAT" and n.srcs[0] in w_info:
                w = w_info[n.srcs[0]]
                got = o.mul_mat(m.gguf.raw(n.srcs[0]), w["type"], w["shape"][0],
                                t(n.src_roots[1]).reshape(-1, w["shape"][0]),
                                repack=w["buffer"] == "CPU_REPACK")
                kind = f"mul_mat {w['type']} {w['buffer']}"
            elif n.op == "MUL_MAT" and n.name.startswith("kq-"):
                kv = t(n.src_keys[0])[0]  # [n_head_kv, n_kv, hd]; here n_kv == kv_size
                kc = kv.transpose(1, 0, 2).reshape(kv.shape[1], -1)
                got, kind = o.attn_kq(kc, t(n.src_roots[1])[0], kv.shape[1], kv.shape[0]), "kq"
            elif n.op == "MUL_MAT" and n.name.startswith("kqv-"):
                vv = t(n.src_keys[0])[0]  # [n_head_kv, hd, n_kv]
                got = o.attn_kqv(vv.reshape(-1, vv.shape[2]), t(n.src_roots[1])[0], vv.shape[2], vv.shape[0])
                kind = "kqv"
            elif n.op == "SOFT_MAX":
                got = o.soft_max_ext(t(n.src_roots[0])[0], t(n.src_roots[1])[0, 0], _f(n.op_params[0]))
                kind = "soft_max"
            elif n.op == "ROPE":
                p = n.op_params
                x = t(n.src_roots[0])[0]
                got = o.rope_ext(x, t(n.src_roots[1]).reshape(-1), p[1], p[2], _f(p[5]), _f(p[6]), p[4],
                                 _f(p[7]), _f(p[8]), _f(p[9]), _f(p[10]))
                kind = "rope"
            elif n.op == "RMS_NORM":
                got, kind = o.rms_norm(t(n.src_roots[0])[0], _f(n.op_params[0])), "rms_norm"
            elif n.op in ("SWIGLU", "GEGLU"):
                got = o.glu(t(n.src_roots[0])[0, 0], t(n.src_roots[1])[0, 0], n.op.lower())
                kind = n.op.lower()
            if got is not None:
                r = res.setdefault(kind, [0, 0])
                r[0] += same_bits(got, want)
                r[1] += 1
    return res


def main(stems: list[str]) -> int:
    paths = [ROOT / "tests/golden/fidelity" / f"{s}.npz" for s in stems] or golden_files()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            g = load_golden(path)
            gguf = write_gguf(SynthSpec.from_dict(g.spec), Path(tmp) / f"{path.stem}.gguf", g.ftype)
            res = check(g, Model(gguf))
            bad += sum(n - k for k, n in res.values())
            print(path.stem, {k: f"{a}/{b}" for k, (a, b) in res.items()})
        g = load_golden(ROOT / "tests/golden/fidelity/llama-Q4_K_M.npz")
        m = Model(write_gguf(SynthSpec.from_dict(g.spec), Path(tmp) / "q4k.gguf", g.ftype))
        raw, rng = m.gguf.raw("blk.0.ffn_gate.weight"), np.random.default_rng(0)
        for n_tok in (1, 3, 8, 13):
            x = rng.standard_normal((n_tok, 256)).astype(np.float32)
            a = o.mul_mat(raw, "Q4_K", 256, x, repack=True)
            print(f"Q4_K n_tok={n_tok}: repack == plain {same_bits(a, o.mul_mat(raw, 'Q4_K', 256, x))}, "
                  f"2 threads == 1 {same_bits(a, o.mul_mat(raw, 'Q4_K', 256, x, True, n_threads=2))}")
    print("all bit-equal" if not bad else f"{bad} nodes differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
