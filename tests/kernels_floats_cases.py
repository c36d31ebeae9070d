"""Cases for the float MUL_MAT kernels: shapes and seeded inputs, shared by
tools/record_kernels_floats.py (which asks llama.cpp) and tests/test_kernels_floats.py.

Inputs come from splitmix64 over an index range, so they do not depend on numpy's RNG streams.
The golden file tests/golden/kernels/floats.json keeps, per case, the sha256 of llama.cpp's output
bytes and its first values (for a readable failure).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).parent / "golden" / "kernels" / "floats.json"

MM_TYPES = ("F32", "F16", "BF16")
MM_N_IN = (64, 256, 320, 1000, 36, 1003)      # 1000 = 8 (mod 32); 36 and 1003 leave tails
MM_N_OUT = (64, 68, 66)                       # 66: m % 4 != 0, tinyBLAS refuses
MM_N_TOK = (1, 2, 3, 4, 5, 7, 8, 13, 33)
ATT_HD = (32, 64, 128)
ATT_N_KV = (256, 512)
ATT_N_TOK = (1, 2, 3, 5, 8, 14, 33)
ATT_GQA = (1, 2, 3)
ATT_N_HEAD_KV = 2


def _splitmix(seed: int, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(30)
        z = z * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def data(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values u * 2**e, u uniform in [-1, 1), e in [-4, 3]: wide enough to exercise rounding."""
    n = int(np.prod(shape))
    z = _splitmix(seed, n)
    u = ((z >> np.uint64(40)).astype(np.float64) / 2.0**23 - 1.0)
    e = ((z >> np.uint64(8)) & np.uint64(7)).astype(np.float64) - 4.0
    return (u * 2.0**e).astype(np.float32).reshape(shape)


def weight_bits(qtype: str, w: np.ndarray) -> np.ndarray:
    """float32 rows -> the weight as GGUF stores it (F32 float32, F16/BF16 uint16 bits)."""
    if qtype == "F32":
        return w
    if qtype == "F16":
        return w.astype(np.float16).view(np.uint16)
    u = w.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def mm_cases() -> list[dict]:
    out = []
    for qt in MM_TYPES:
        for n_in in MM_N_IN:
            for n_out in MM_N_OUT:
                for n_tok in MM_N_TOK:
                    out.append(dict(id=f"mm-{qt}-{n_out}x{n_in}-t{n_tok}", qtype=qt, n_in=n_in,
                                    n_out=n_out, n_tok=n_tok, seed=len(out) + 1))
    return out


def mm_inputs(c: dict) -> tuple[np.ndarray, np.ndarray]:
    """(weight as stored, x float32 [n_tok, n_in])."""
    w = data(c["seed"], (c["n_out"], c["n_in"]))
    x = data(c["seed"] + 10_000, (c["n_tok"], c["n_in"]))
    return weight_bits(c["qtype"], w), x


def att_cases() -> list[dict]:
    out = []
    for hd in ATT_HD:
        for n_kv in ATT_N_KV:
            for n_tok in ATT_N_TOK:
                for g in ATT_GQA:
                    for op in ("kq", "kqv"):
                        out.append(dict(id=f"{op}-hd{hd}-kv{n_kv}-t{n_tok}-g{g}", op=op, hd=hd,
                                        n_kv=n_kv, n_tok=n_tok, gqa=g, seed=100_000 + len(out)))
    return out


def att_inputs(c: dict) -> dict:
    """llama.cpp-side tensors (whole f16 caches with kv_size = n_kv + 256, cells past n_used zero)
    and our operands a [H_a, M, K] uint16, b [H_b, N, K] float32."""
    hd, n_kv, n_tok, s = c["hd"], c["n_kv"], c["n_tok"], c["seed"]
    hkv = ATT_N_HEAD_KV
    n_head = hkv * c["gqa"]
    kv_size = n_kv + 256
    n_used = n_kv - 256 + 1 + (s * 37) % 255              # the padded view always has zero cells
    cache = np.zeros((kv_size, hkv * hd), np.float32)
    cache[:n_used] = data(s, (n_used, hkv * hd))
    cache = cache.astype(np.float16).view(np.uint16)
    if c["op"] == "kq":
        q = data(s + 1, (n_tok, n_head, hd))               # Qcur [n_tok, n_head, hd]
        a = cache[:n_kv].reshape(n_kv, hkv, hd).transpose(1, 0, 2)
        return dict(cache=cache, src1=q, a=np.ascontiguousarray(a),
                    b=np.ascontiguousarray(q.transpose(1, 0, 2)), contiguous=False)
    v_t = np.ascontiguousarray(cache.T)                    # [hkv*hd, kv_size]
    p = np.abs(data(s + 1, (n_head, n_tok, n_kv)))
    p[:, :, n_used:] = 0.0
    p /= p.sum(axis=2, keepdims=True)
    p = p.astype(np.float32)
    a = v_t.reshape(hkv, hd, kv_size)[:, :, :n_kv]
    return dict(cache=v_t, src1=p, a=np.ascontiguousarray(a), b=p, contiguous=True)


def digest(y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(y, dtype=np.float32).tobytes()).hexdigest()[:16]
