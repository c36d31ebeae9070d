"""qdbg.numerics.kernels.flash_attn against llama.cpp's ggml_flash_attn_ext, bit for bit.

tests/golden/kernels/flash_attn.json (written by tools/record_kernels_flash_attn.py from the
installed llama.cpp, with an explicit thread count) holds, per case of CASES, the sha256 of the
whole float32 output and the first values of its last row (flash_attn_rows.npz, for diagnosis). Inputs are rebuilt
here from the seed: Q normal (times q_mul), K/V half normal in the used cells and zero in the
padding, a causal mask over the used cells (optionally with a sliding window).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from qdbg.numerics.kernels.fa_dot import dot_f16_scores
from qdbg.numerics.kernels.flash_attn import flash_attn_ext, kernel_for
from qdbg.numerics.kernels.floats import vec_dot_f16

GOLDEN = Path(__file__).parent / "golden" / "kernels"


class Case(NamedTuple):
    """n_tok query rows at the end of n_used cells of an n_kv-cell KV view."""

    seed: int
    n_tok: int
    n_used: int
    n_kv: int
    n_head: int
    n_head_kv: int
    d: int
    scale: float  # 0.0 means 1/sqrt(d)
    n_threads: int = 1
    q_mul: float = 1.0
    swa: int = 0  # sliding window (0: none): key j visible from position p if p - j < swa
    softcap: float = 0.0

    @property
    def name(self) -> str:
        return (f"s{self.seed}-t{self.n_tok}-u{self.n_used}-kv{self.n_kv}-h{self.n_head}x{self.n_head_kv}"
                f"-d{self.d}-sc{self.scale:g}-th{self.n_threads}-q{self.q_mul:g}-w{self.swa}"
                + (f"-cap{self.softcap:g}" if self.softcap else ""))


def make_inputs(c: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(q f32 [n_tok, n_head, d], k, v half bits [n_kv, n_head_kv, d], mask f32 [n_tok, n_kv], scale)."""
    rng = np.random.default_rng(c.seed)
    q = (rng.standard_normal((c.n_tok, c.n_head, c.d)) * c.q_mul).astype(np.float32)
    k = np.zeros((c.n_kv, c.n_head_kv, c.d), np.float16)
    v = np.zeros((c.n_kv, c.n_head_kv, c.d), np.float16)
    k[:c.n_used] = rng.standard_normal((c.n_used, c.n_head_kv, c.d))
    v[:c.n_used] = rng.standard_normal((c.n_used, c.n_head_kv, c.d))
    mask = np.full((c.n_tok, c.n_kv), -np.inf, np.float32)
    for i in range(c.n_tok):
        p = c.n_used - c.n_tok + i
        lo = max(0, p - c.swa + 1) if c.swa else 0
        mask[i, lo:p + 1] = 0.0
    scale = c.scale or float(np.float32(1.0 / np.sqrt(c.d)))
    return q, k.view(np.uint16), v.view(np.uint16), mask, scale


SAMPLE = 256  # values of the last output row kept in the golden file


def sample(out: np.ndarray) -> np.ndarray:
    """The values kept in full in the golden file (the rest is covered by the digest)."""
    return out[-1, :SAMPLE]


def _one_chunk_cases() -> list[Case]:
    out, seed = [], 100
    shapes = [(4, 4, 64), (4, 2, 64), (6, 2, 128), (6, 3, 64), (4, 2, 256), (2, 1, 128)]
    for i, n_tok in enumerate([1, 2, 3, 5, 7, 8, 9, 13, 16, 31, 32, 33, 47, 63]):
        nh, nhkv, d = shapes[i % len(shapes)]
        for scale in (0.0, 1.0):
            past = (7 * i) % 40
            out.append(Case(seed, n_tok, past + n_tok, 256, nh, nhkv, d, scale,
                            q_mul=0.25 if scale == 1.0 else 1.0))
            seed += 1
    out += [
        Case(seed + 0, 7, 7, 256, 8, 4, 256, 1.0, q_mul=1 / 16),            # gemma3: Q scaled by 1/16
        Case(seed + 1, 9, 120, 256, 8, 4, 256, 1.0, q_mul=1 / 16, swa=32),  # gemma3 sliding window
        Case(seed + 2, 5, 40, 256, 4, 2, 64, 0.0, n_threads=2),             # threads do not matter
        Case(seed + 3, 1, 200, 256, 4, 1, 128, 0.0),                        # decode below 512 cells
        Case(seed + 4, 20, 300, 512, 4, 2, 64, 0.0, q_mul=3.0),             # wide score range
        Case(seed + 5, 3, 3, 48, 2, 1, 64, 0.0),                            # tiny view
        Case(seed + 6, 6, 50, 256, 4, 2, 80, 0.0),                          # d % 32 != 0: dot tail
        Case(seed + 7, 11, 40, 256, 4, 2, 128, 0.0, q_mul=3.0, softcap=5.0),  # gemma2 logit softcap
    ]
    return out


def _tiled_cases() -> list[Case]:
    out, seed = [], 300
    rows = [(64, 64, 256, 4, 4, 64), (65, 65, 256, 4, 2, 64), (100, 160, 256, 6, 2, 128),
            (127, 200, 256, 4, 2, 64), (128, 256, 256, 2, 1, 128), (130, 400, 512, 4, 2, 64),
            (96, 500, 512, 6, 3, 64), (70, 300, 512, 2, 2, 256)]
    for n_tok, n_used, n_kv, nh, nhkv, d in rows:
        for nth in (1, 2):
            out.append(Case(seed, n_tok, n_used, n_kv, nh, nhkv, d, 0.0, n_threads=nth))
        seed += 1
    out += [
        Case(seed + 0, 80, 80, 256, 4, 2, 64, 1.0, q_mul=3.0),              # |x - max| > 126 lanes
        Case(seed + 1, 100, 300, 512, 4, 2, 256, 1.0, q_mul=1 / 16, swa=64),  # whole KV tiles skipped
        Case(seed + 2, 64, 200, 300, 4, 2, 64, 0.0, n_threads=3),           # partial last KV tile
        Case(seed + 3, 66, 66, 256, 3, 1, 64, 0.0, n_threads=4),            # tiles cut by chunks
        Case(seed + 4, 72, 90, 256, 4, 2, 96, 0.0),                         # d % 64 != 0
        Case(seed + 5, 90, 120, 256, 4, 2, 128, 0.0, q_mul=3.0, softcap=5.0),
    ]
    return out


def _split_cases() -> list[Case]:
    out, seed = [], 500
    for n_kv, n_used in [(512, 300), (512, 512), (768, 700), (1024, 1000), (1024, 520)]:
        for nth in (1, 2, 3, 4):
            out.append(Case(seed, 1, n_used, n_kv, 4, 2, 64, 0.0, n_threads=nth))
        seed += 1
    out += [Case(seed, 1, 600, 768, 8, 4, 256, 1.0, n_threads=nth, q_mul=1 / 16, swa=128) for nth in (1, 2)]
    out += [Case(seed + 1, 1, 900, 1024, 6, 2, 128, 0.0, n_threads=nth) for nth in (1, 2)]
    out += [Case(seed + 2, 1, 530, 768, 4, 4, 80, 0.0, n_threads=nth) for nth in (1, 2)]
    out += [Case(seed + 3, 1, 600, 768, 4, 2, 128, 0.0, n_threads=nth, q_mul=3.0, softcap=5.0) for nth in (1, 2)]
    return out


CASES: list[Case] = _one_chunk_cases() + _tiled_cases() + _split_cases()


def run(c: Case) -> np.ndarray:
    q, k, v, mask, scale = make_inputs(c)
    return flash_attn_ext(q, k, v, mask, scale, n_threads=c.n_threads, softcap=c.softcap)


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()


def _load() -> tuple[dict, dict]:
    meta = json.loads((GOLDEN / "flash_attn.json").read_text())
    with np.load(GOLDEN / "flash_attn_rows.npz") as z:
        rows = {name: z[name] for name in z.files}
    return meta, rows


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict]:
    return _load()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{kernel_for(c.n_tok, c.n_kv, c.n_threads)}-{c.name}")
def test_bit_equal(case: Case, golden: tuple[dict, dict]) -> None:
    meta, rows = golden
    want = meta["cases"][case.name]
    got = run(case)
    assert kernel_for(case.n_tok, case.n_kv, case.n_threads) == want["kernel"]
    ref, mine = rows[case.name], sample(got)
    bad = int(np.sum(mine.view(np.uint32) != ref.view(np.uint32)))
    assert bad == 0, f"{bad} of {ref.size} sampled values differ (max abs {np.abs(mine - ref).max()})"
    assert digest(got) == want["sha256"]


@pytest.mark.parametrize("dk", [32, 40, 64, 80, 96, 128, 256])
def test_batched_dot_is_vec_dot_f16(dk: int) -> None:
    """fa_dot's batched scores equal ggml_vec_dot_f16 as qdbg.numerics.kernels.floats has it."""
    rng = np.random.default_rng(dk)
    n_kv, n_head_kv, rows = 70, 2, 3
    k = rng.standard_normal((n_kv, n_head_kv, dk)).astype(np.float16).view(np.uint16)
    qg = (rng.standard_normal((rows, dk)) * 4).astype(np.float16)
    sc = np.empty((rows, n_kv), np.float32)
    for hk in range(n_head_kv):
        dot_f16_scores(k, hk, qg.astype(np.float32), sc)
        qb = qg.view(np.uint16).ravel()
        kb = np.ascontiguousarray(k[:, hk, :]).ravel()
        want = np.array([[vec_dot_f16(dk, kb, ic * dk, qb, r * dk) for ic in range(n_kv)] for r in range(rows)],
                        np.float32)
        assert np.array_equal(sc.view(np.uint32), want.view(np.uint32))


def test_every_kernel_covered() -> None:
    kinds = {kernel_for(c.n_tok, c.n_kv, c.n_threads) for c in CASES}
    assert kinds == {"one_chunk", "tiled", "split"}


def test_split_decode_depends_on_threads(golden: tuple[dict, dict]) -> None:
    """llama.cpp's own outputs differ between 1 and 2 threads on the split path (and we follow)."""
    meta, _ = golden
    for n_kv, n_used in [(512, 300), (768, 700), (1024, 1000)]:
        one, two = (next(c for c in CASES if c.n_tok == 1 and c.n_kv == n_kv and c.n_used == n_used
                         and c.n_threads == t) for t in (1, 2))
        assert meta["cases"][one.name]["sha256"] != meta["cases"][two.name]["sha256"]
        assert not np.array_equal(run(one).view(np.uint32), run(two).view(np.uint32))


def test_tiled_and_one_chunk_do_not_depend_on_threads(golden: tuple[dict, dict]) -> None:
    meta, _ = golden
    for c in CASES:
        if c.n_tok >= 64 and c.n_threads == 2:
            one = c._replace(n_threads=1)
            assert meta["cases"][one.name]["sha256"] == meta["cases"][c.name]["sha256"]
