"""The cases of the elementwise-kernel goldens: names, parameters and seeded inputs.

Shared by tools/record_kernels_elementwise.py (which runs them through the wheel's ggml) and
tests/test_kernels_elementwise.py (which runs them through qdbg); numpy only. A case is a dict
{name, op, seed, ...params}; `inputs(case)` rebuilds its arrays bit for bit from the seed.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32

# values where exp over/underflows, v_expf changes branch, or the GELU table path ends
EDGES = np.array([-1e30, -1e4, -200.0, -133.0, -104.0, -103.9, -88.8, -88.7, -87.4, -87.3, -20.0,
                  -10.001, -10.0, -9.999, -5.0, -1.0, -1e-3, -1e-30, -0.0, 0.0, 1e-30, 1e-3, 0.5,
                  1.0, 5.0, 9.999, 10.0, 10.001, 20.0, 65504.0, 65520.0, 87.3, 88.3, 88.4, 88.8,
                  104.0, 133.0, 200.0, 1e4, 1e30, -3.3, 2.2, 0.7], dtype=F32)  # 43: a scalar tail


def _softmax_cases() -> list[dict]:
    out = []
    shapes = [(1, 1, 256), (1, 2, 256), (2, 7, 256), (3, 13, 256), (4, 32, 512), (8, 70, 512),
              (5, 3, 512), (8, 1, 512), (6, 64, 256), (1, 5, 13), (2, 3, 100), (1, 4, 7)]
    masks = ["causal", "swa32", "causal", "swa128", "causal", "causal", "one", "swa32", "causal",
             "none", "causal", "one"]
    scales = [0.125, 0.08838835, 1.0, 0.0625, 0.08838835, 0.125, 1.0, 0.125, 1.0, 0.3, 0.125, 1.0]
    mags = [8.0, 20.0, 40.0, 8.0, 30.0, 10.0, 100.0, 8.0, 150.0, 5.0, 10.0, 3.0]
    for i, ((h, n, kv), m, sc, mag) in enumerate(zip(shapes, masks, scales, mags)):
        out.append(dict(name=f"softmax_h{h}_n{n}_kv{kv}_{m}", op="softmax", seed=100 + i, h=h,
                        n=n, n_kv=kv, mask=m, scale=sc, max_bias=0.0, mag=mag))
    for i, (h, n, kv) in enumerate([(8, 5, 256), (5, 9, 256), (3, 2, 13)]):  # ALiBi slopes
        out.append(dict(name=f"softmax_alibi_h{h}_n{n}_kv{kv}", op="softmax", seed=200 + i, h=h,
                        n=n, n_kv=kv, mask="causal", scale=0.125, max_bias=8.0, mag=8.0))
    for i, (mt, mb) in enumerate([("F32", 8.0), ("F16", 8.0), ("F16", 0.0)]):  # slope*mask FMA
        out.append(dict(name=f"softmax_noisy_{mt}_mb{int(mb)}", op="softmax", seed=210 + i, h=6,
                        n=9, n_kv=256, mask="noisy", scale=0.2, max_bias=mb, mag=10.0,
                        mask_type=mt))
    return out


def _glu_cases() -> list[dict]:
    out = []
    shapes = [(1, 1), (1, 7), (3, 8), (2, 9), (4, 37), (5, 64), (3, 1003), (14, 2819)]
    for op in ("swiglu", "geglu"):
        for i, (r, c) in enumerate(shapes):
            mag = [3.0, 30.0][i % 2]
            out.append(dict(name=f"{op}_{r}x{c}_m{int(mag)}", op=op, seed=300 + i, rows=r,
                            cols=c, mag=mag))
        out.append(dict(name=f"{op}_edges", op=op, seed=399, rows=15, cols=EDGES.size, mag=0.0))
    return out


def _rope_cases() -> list[dict]:
    out = []
    dims = [(64, 64), (32, 64), (128, 128), (2, 8), (6, 8), (10, 16), (14, 16), (80, 80),
            (96, 128), (4, 4)]
    bases = [(10000.0, 1.0), (500000.0, 1.0), (1e6, 1.0), (10000.0, 0.25), (1e6, 0.125)]
    k = 0
    for neox in (False, True):
        for j, (nd, hd) in enumerate(dims):
            for b, (base, fs) in enumerate(bases):
                if (j + b) % 2 and nd not in (64, 128):
                    continue  # a thinner grid for the small shapes
                out.append(dict(name=f"rope_{'neox' if neox else 'norm'}_d{nd}of{hd}_b{int(base)}"
                                     f"_fs{fs}", op="rope", seed=500 + k, n_tok=9, n_head=3,
                                n_dims=nd, head_dim=hd, base=base, freq_scale=fs, neox=neox))
                k += 1
    return out


def _misc_cases() -> list[dict]:
    out = []
    for i, (r, c, eps, mag) in enumerate([(1, 1, 1e-6, 1.0), (3, 7, 1e-5, 1.0), (2, 37, 1e-6, 1e-3),
                                          (4, 64, 1e-6, 3.0), (2, 1001, 1e-5, 1e3),
                                          (3, 2049, 1e-6, 1.0), (1, 4097, 1e-6, 7.0)]):
        out.append(dict(name=f"rms_norm_{r}x{c}", op="rms_norm", seed=700 + i, rows=r, cols=c,
                        eps=eps, mag=mag, weight=bool(i % 2)))
    for i, (r, c, cap, mag) in enumerate([(2, 100, 30.0, 40.0), (3, 37, 50.0, 100.0),
                                          (1, 1000, 30.0, 5.0)]):
        out.append(dict(name=f"softcap_{r}x{c}_c{int(cap)}", op="softcap", seed=800 + i, rows=r,
                        cols=c, cap=cap, mag=mag))
    out.append(dict(name="scale_5x33", op="scale", seed=900, rows=5, cols=33, s=0.0883883, mag=9.0))
    out.append(dict(name="add_4x19", op="add", seed=901, rows=4, cols=19, mag=9.0))
    return out


def cases() -> list[dict]:
    """Every case, in recording order."""
    return _softmax_cases() + _glu_cases() + _rope_cases() + _misc_cases()


def kq_mask(n: int, n_kv: int, kind: str, seed: int) -> np.ndarray | None:
    """A llama.cpp-style KQ mask [n, n_kv]: the n queries are the last n of n_past + n filled
    cells (the rest of the n_kv view is padding, -inf); causal, sliding-window (swaN: also
    q - k < N), or 'one' (every row has exactly one unmasked cell)."""
    if kind == "none":
        return None
    rng = np.random.default_rng(seed + 1)
    n_fill = max(n, min(n_kv - 1, n_kv * 3 // 4))
    q_pos = np.arange(n_fill - n, n_fill)[:, None]
    k_pos = np.arange(n_kv)[None, :]
    if kind == "one":
        ok = k_pos == rng.integers(0, n_kv, size=(n, 1))
    else:
        ok = (k_pos <= q_pos) & (k_pos < n_fill)
        if kind.startswith("swa"):
            ok &= (q_pos - k_pos) < int(kind[3:])
    if kind == "noisy":  # finite non-zero values (half-representable) where attention is allowed
        vals = rng.standard_normal(ok.shape).astype(np.float16).astype(F32)
        return np.where(ok, vals, F32(-np.inf)).astype(F32)
    return np.where(ok, F32(0.0), F32(-np.inf)).astype(F32)


def inputs(case: dict) -> dict[str, np.ndarray]:
    """The case's input arrays, rebuilt from its seed."""
    rng = np.random.default_rng(case["seed"])
    op = case["op"]
    if op == "softmax":
        kq = (rng.standard_normal((case["h"], case["n"], case["n_kv"])) * case["mag"]).astype(F32)
        m = kq_mask(case["n"], case["n_kv"], case["mask"], case["seed"])
        if m is not None and case.get("mask_type") == "F16":
            m = m.astype(np.float16)
        return {"kq": kq} if m is None else {"kq": kq, "mask": m}
    if op in ("swiglu", "geglu"):
        shape = (case["rows"], case["cols"])
        if case["mag"] == 0.0:  # edge values, rolled so each lands in SIMD lanes and the tail
            gate = np.stack([np.roll(EDGES, 3 * r) for r in range(case["rows"])])
            up = rng.standard_normal(gate.shape).astype(F32)
            up[0] = 1.0
            return {"gate": gate, "up": up}
        gate = (rng.standard_normal(shape) * case["mag"]).astype(F32)
        return {"gate": gate, "up": rng.standard_normal(shape).astype(F32)}
    if op == "rope":
        x = rng.standard_normal((case["n_tok"], case["n_head"], case["head_dim"])).astype(F32)
        pos = np.concatenate([[0, 1, 4095, 4096], rng.integers(0, 4097, case["n_tok"] - 4)])
        return {"x": x, "pos": pos.astype(np.int32)}
    shape = (case["rows"], case["cols"])
    x = (rng.standard_normal(shape) * case["mag"]).astype(F32)
    if op == "rms_norm":
        w = (rng.standard_normal(case["cols"]) * 0.5 + 1.0).astype(F32)
        return {"x": x, "w": w} if case["weight"] else {"x": x}
    if op == "add":
        return {"a": x, "b": rng.standard_normal(case["cols"]).astype(F32)}
    return {"x": x}


def digest(a: np.ndarray) -> str:
    """sha256 of an array's C-order little-endian bytes (float32 bit patterns)."""
    import hashlib
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
