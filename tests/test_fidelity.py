"""Fidelity against llama.cpp: qdbg's engine on the models llama.cpp ran, op by op and end to end.

The goldens (tests/golden/fidelity, recorded by tools/record_golden.py) hold llama.cpp's graph
tensors and logits for synthetic models quantized by llama.cpp itself. We rebuild each model with
qdbg.synth (and prove it is the very file llama.cpp used: every tensor's sha256 matches), then:

- op by op, in ggml mode, every op is fed llama.cpp's own inputs (each op's output is replaced by
  llama.cpp's tensor before the run goes on) and must match llama.cpp's output to a relative
  error ||ours - llama|| / ||llama|| <= 1e-5;
- in exact mode, free-running from the token ids (nothing fed in), every op that has a llama.cpp
  node and every logit must equal llama.cpp's **bit for bit** (float32 bit patterns, no tolerance);
- end to end, in the approximate modes, the top-1 token must agree wherever llama.cpp's top-2
  margin exceeds 0.5, and the mean KL(llama.cpp || qdbg) per position must be <= 0.02 nats. Those
  modes cannot be exact: a one-ulp difference can move an activation across an 8-bit rounding
  boundary, and that grows through the layers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from goldens import Golden, golden_files, load_golden
from qdbg.engine.forward import Engine
from qdbg.engine.result import OpResult
from qdbg.model import Model
from qdbg.numerics import RunSettings
from qdbg.synth import SynthCache, SynthSpec, write_gguf

OP_TOL = 1e-5
KL_TOL = 0.02
MARGIN = 0.5

GOLDENS = golden_files()
IDS = [p.stem for p in GOLDENS]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Build (once per session) the synthetic model of each golden file."""
    out = tmp_path_factory.mktemp("fidelity")
    caches: dict[SynthSpec, SynthCache] = {}
    paths: dict[str, Path] = {}

    def get(g: Golden) -> Path:
        key = g.path.stem
        if key not in paths:
            spec = SynthSpec.from_dict(g.spec)
            cache = caches.setdefault(spec, SynthCache(spec))
            paths[key] = write_gguf(spec, out / f"{key}.gguf", g.ftype, cache=cache)
        return paths[key]

    return get


@pytest.fixture(scope="module", params=GOLDENS, ids=IDS)
def golden(request) -> Golden:
    return load_golden(request.param)


def test_synth_reproduces_llama_cpp_file(golden: Golden, built) -> None:
    """Our synth + quantizers write byte-identical tensors to the file llama.cpp quantized."""
    m = Model(built(golden))
    want = golden.gguf_tensors
    assert set(m.tensors) == set(want)
    for name, info in m.tensors.items():
        assert info.qtype.name == want[name]["type"], name
        assert hashlib.sha256(m.gguf.raw(name).tobytes()).hexdigest() == want[name]["sha256"], name


def _llama_node(g: Golden, r: OpResult, src_names: dict[str, str]):
    """The golden node holding the same tensor as our result (None if llama.cpp has none)."""
    if r.ggml_op is None:
        return None
    if r.ggml_name is not None:
        found = g.nodes(r.step, r.ggml_name, r.ggml_op)
        return found[-1] if found else None
    # unnamed in llama.cpp's graph (e.g. qwen's output projection): find it by its input
    ins = [src_names.get(i) for i in r.inputs]
    for n in g.nodes(r.step, op=r.ggml_op):
        if any(s in n.srcs for s in ins if s):
            return n
    return None


def _as_ours(arr: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A golden array (ggml ne reversed, 4-d, KV axis padded) cut to our op's shape."""
    a = arr.reshape(arr.shape[len(arr.shape) - like.ndim:]) if arr.ndim > like.ndim else arr
    return a[tuple(slice(0, s) for s in like.shape)].astype(np.float32)


def test_op_by_op_ggml(golden: Golden, built) -> None:
    """Fed llama.cpp's inputs, every op reproduces llama.cpp's output to 1e-5 relative."""
    m = Model(built(golden))
    errs: list[tuple[float, int, str]] = []
    names: dict[int, dict[str, str]] = {}

    def force(r: OpResult):
        src = names.setdefault(r.step, {})
        node = _llama_node(golden, r, src)
        if node is None:
            return None
        src[r.name] = node.name
        ref = _as_ours(golden.tensor_by_key(r.step, node.key), r.value)
        denom = float(np.linalg.norm(ref.astype(np.float64)))
        rel = float(np.linalg.norm((r.value - ref).astype(np.float64))) / max(denom, 1e-30)
        errs.append((rel, r.step, r.name))
        return ref

    eng = Engine(m, "ggml", overrides=force)
    eng.logits(golden.tokens[:golden.n_prompt])
    for t in golden.tokens[golden.n_prompt:]:
        eng.logits([t])
    assert len(errs) > 20 * m.config.n_layer, "too few ops matched llama.cpp's graph"
    bad = sorted(e for e in errs if not e[0] <= OP_TOL)
    worst = sorted(errs, reverse=True)[:5]
    assert not bad, f"{len(bad)} ops above {OP_TOL}: {bad[-8:]}; worst {worst}"


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and bool((a.view(np.uint32) == b.view(np.uint32)).all())


def test_exact_every_node_and_logit(golden: Golden, built) -> None:
    """Exact mode, free-running: every op with a llama.cpp node, and every logit, bit for bit."""
    m = Model(built(golden))
    names: dict[int, dict[str, str]] = {}
    checked: list[str] = []
    bad: list[str] = []

    def compare(r: OpResult):
        src = names.setdefault(r.step, {})
        node = _llama_node(golden, r, src)
        if node is None:
            return None
        src[r.name] = node.name
        full = golden.tensor_by_key(r.step, node.key)
        ref = _as_ours(full, r.value)
        if r.kind in ("scores", "softmax"):  # KV cells past ours: llama.cpp's padding, exactly 0
            pad = full.reshape(full.shape[-r.value.ndim:])[..., r.value.shape[-1]:]
            if pad.size and np.any(pad != 0):
                bad.append(f"step {r.step} {r.name}: nonzero KV padding")
        checked.append(r.name)
        if not _bits_equal(r.value, ref):
            n = int((np.asarray(r.value, np.float32).view(np.uint32) != ref.view(np.uint32)).sum())
            bad.append(f"step {r.step} {r.name} ({node.key}): {n} of {ref.size} elements differ")
        return None

    settings = RunSettings(n_ctx=int(golden.manifest["settings"]["n_ctx"]),
                           n_threads=int(golden.manifest["settings"]["n_threads"]))
    eng = Engine(m, "exact", overrides=compare, settings=settings)
    ours = eng.logits(golden.tokens, decode=len(golden.tokens) - golden.n_prompt)
    assert len(checked) > 20 * m.config.n_layer, "too few ops matched llama.cpp's graph"
    assert not bad, f"{len(bad)} of {len(checked)} ops differ from llama.cpp: {bad[:8]}"
    assert _bits_equal(ours, golden.logits), "logits differ from llama.cpp"


@pytest.mark.parametrize("mode", ["ggml", "f32"])
def test_end_to_end(golden: Golden, built, mode: str) -> None:
    """Logits of prompt and decode steps: top-1 where llama.cpp is confident, and mean KL."""
    m = Model(built(golden))
    eng = Engine(m, mode)
    rows = [eng.logits(golden.tokens[:golden.n_prompt])]
    rows += [eng.logits([t]) for t in golden.tokens[golden.n_prompt:]]
    ours = np.concatenate(rows).astype(np.float64)
    ref = golden.logits.astype(np.float64)
    assert ours.shape == ref.shape

    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(ours)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > MARGIN
    agree = ours.argmax(-1) == ref.argmax(-1)
    assert agree[confident].all(), f"top-1 differs at confident positions {np.where(confident & ~agree)[0]}"
    assert kl.mean() <= KL_TOL, f"mean KL {kl.mean():.4f} (per position {np.round(kl, 4)})"
