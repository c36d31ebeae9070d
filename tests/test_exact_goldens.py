"""Exact mode against llama.cpp, bit for bit, over every architecture x weight type x scenario.

tests/golden/exact (tools/record_exact_golden.py) holds, for synthetic models quantized "pure" by
llama.cpp to each weight type, the sha256 of every node llama.cpp computed and of every step's
logits, in scenarios that pick different kernels: a >= 8-token prompt (tiled K-quant matmul,
repacked gemm) and its one-token decodes (vec_dot, gemv), a 2-7-token prompt (tinyBLAS), a
prompt split into micro-batches, and flash attention in each of its three kernels (one chunk,
tiled, and the split-KV decode with 1 and 2 threads). qdbg rebuilds each model (proving it is
llama.cpp's file), runs it free from the token ids with the scenario's settings, and every op
that has a llama.cpp node must hash like it: no tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exact_goldens import ExactGolden, Scenario, Step, exact_golden_files, load_exact_golden, rebuild_model
from qdbg.engine.forward import Engine
from qdbg.engine.result import OpResult
from qdbg.model import Model
from qdbg.numerics import RunSettings

FILES = exact_golden_files()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exact-models")


def _padded(value: np.ndarray, kind: str, n_kv: int) -> np.ndarray:
    """Our scores/probabilities [n_head, n_tok, n_used] widened to llama.cpp's KV view with the
    zeros its padding cells hold (K rows there are zero; the mask sends their probability to 0)."""
    if kind not in ("scores", "softmax") or value.shape[-1] == n_kv:
        return value
    pad = np.zeros(value.shape[:-1] + (n_kv - value.shape[-1],), np.float32)
    return np.concatenate([value, pad], axis=-1)


class StepMatcher:
    """Finds the llama.cpp node of each of our ops in one step and compares hashes."""

    def __init__(self, step: Step, n_kv: int) -> None:
        self.step, self.n_kv = step, n_kv
        self.unnamed: dict[str, list] = {}
        for n in step.nodes:
            if n.sha256 is not None and n.name.startswith("node_"):
                self.unnamed.setdefault(n.op, []).append(n)
        self.used: dict[str, int] = {}
        self.checked: list[str] = []
        self.bad: list[str] = []

    def node_for(self, r: OpResult):
        if r.ggml_op is None:
            return None
        if r.ggml_name is not None:
            found = [n for n in self.step.find(r.ggml_name, r.ggml_op) if n.sha256 is not None]
            return found[-1] if found else None
        i = self.used.get(r.ggml_op, 0)  # unnamed in llama.cpp's graph: the next one of that op
        self.used[r.ggml_op] = i + 1
        cands = self.unnamed.get(r.ggml_op, [])
        return cands[i] if i < len(cands) else None

    def __call__(self, r: OpResult):
        node = self.node_for(r)
        if node is not None:
            ours = _padded(np.asarray(r.value, np.float32), r.kind, self.n_kv)
            self.checked.append(r.name)
            if not node.matches(ours):
                self.bad.append(f"{r.name} ({node.key} {node.op})")
        return None


def _run_scenario(path: Path, sc: Scenario) -> tuple[int, list[str]]:
    settings = RunSettings(n_ubatch=sc.n_ubatch, n_ctx=sc.n_ctx, flash_attn=sc.flash_attn,
                           n_threads=sc.n_threads)
    eng = Engine(Model(path), "exact", settings=settings)
    checked, bad = 0, []
    for st in sc.steps:
        match = StepMatcher(st, max(st.n_kv))
        eng.hook = match
        res = None
        for res in eng.forward(sc.step_tokens(st)):
            pass
        assert res is not None
        checked += len(match.checked)
        bad += [f"step {st.index}: {b}" for b in match.bad]
        if not st.logits_match(res.value):
            bad.append(f"step {st.index}: logits")
    return checked, bad


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_exact_bit_for_bit(path: Path, model_dir: Path) -> None:
    g: ExactGolden = load_exact_golden(path)
    model = rebuild_model(g, model_dir)
    failures = []
    for sc in g.scenarios:
        checked, bad = _run_scenario(model, sc)
        assert checked >= 10 * len(sc.steps), f"{sc.name}: too few ops matched llama.cpp's graph"
        if bad:
            failures.append(f"{sc.name}: {len(bad)} differ, e.g. {bad[:4]}")
    assert not failures, "; ".join(failures)
