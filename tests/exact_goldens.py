"""Loader for the exact-mode goldens in tests/golden/exact/<arch>-<wtype>.npz.

Each file (written by tools/record_exact_golden.py) holds what llama.cpp (llama-cpp-python 0.3.36,
CPU backend) computed for one synthetic model -- qdbg.synth's default SynthSpec of the arch, the whole
model quantized by llama_model_quantize with params.pure = True to `wtype` -- in several scenarios,
each a fresh context: per micro-batch step, every graph node (name, occurrence k, op, type, ne, srcs)
with the sha256 of its contents and a small fingerprint, plus the step's logits sha256 and the last
position's top-32 logits. Views (VIEW, RESHAPE, PERMUTE, TRANSPOSE) are listed without data so that
k numbers the nodes of one name exactly as in llama.cpp's graph.

    g = load_exact_golden(path)
    for step in g.scenario("prompt12").steps:
        step.node("kq-0", op="MUL_MAT").sha256 == array_sha256(ours, "f32")

Hashing (`array_sha256`): the node's values as a C-contiguous array of shape ne reversed (ggml's
[ne0, ne1, ne2, ne3] is numpy [ne3, ne2, ne1, ne0]; leading size-1 axes do not change the bytes), in
the node's own element type (f32 -> float32, f16 -> float16, i32 -> int32, i64 -> int64).
Hermetic: numpy, json and qdbg only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EXACT_DIR = Path(__file__).parent / "golden" / "exact"
FORMAT_VERSION = 1
VIEW_OPS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})
_DTYPES = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "i64": np.int64, "bf16": np.uint16}


def array_sha256(arr: np.ndarray, ggml_type: str = "f32") -> str:
    """sha256 hex of `arr` as the recorder hashes a node of type `ggml_type` (see module doc)."""
    a = np.asarray(arr)
    if a.dtype != _DTYPES[ggml_type]:
        a = a.astype(_DTYPES[ggml_type])
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@dataclass(frozen=True)
class Node:
    """One llama.cpp graph node of a step. sha256/head/sum are None for views (not computed)."""

    name: str
    k: int
    op: str
    type: str
    ne: tuple[int, int, int, int]
    srcs: tuple[str, ...]  # "<name>#<k>" of graph nodes/inputs, or a weight's name
    op_params: tuple[int, ...]  # ggml op_params as int32 (trailing zeros dropped; floats bit-cast)
    sha256: str | None
    head: tuple[float, ...] | None  # first values (fewer if the tensor is smaller)
    sum: float | None  # float64 sum of all values

    @property
    def key(self) -> str:
        return f"{self.name}#{self.k}"

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy shape of the node's data (ne reversed, 4 dims)."""
        return tuple(reversed(self.ne))

    @property
    def is_view(self) -> bool:
        return self.op in VIEW_OPS

    def param_f32(self, i: int) -> float:
        """op_params[i] read as a float32 (e.g. SOFT_MAX scale = 0, RMS_NORM eps = 0)."""
        p = self.op_params[i] if i < len(self.op_params) else 0
        return float(np.array([p], np.int32).view(np.float32)[0])

    def matches(self, arr: np.ndarray) -> bool:
        """True if `arr` (any shape with the node's element count) hashes like this node."""
        if self.sha256 is None:
            raise ValueError(f"node {self.key} ({self.op}) is a view: no data was recorded")
        return int(np.size(arr)) == int(np.prod(self.ne)) and array_sha256(arr, self.type) == self.sha256


@dataclass(frozen=True)
class Step:
    """One micro-batch (one graph): its token positions, KV view sizes and nodes in graph order."""

    index: int
    positions: tuple[int, ...]
    n_kv: tuple[int, ...]  # ne[0] of each attn_inp_kq_mask (gemma3: sliding-window one first)
    nodes: tuple[Node, ...]
    logits_sha256: str  # of the float32 logits [n_tokens, n_vocab] of this step
    top_ids: tuple[int, ...]  # last position's 32 largest logits, largest first
    top_logits: tuple[float, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.positions)

    def find(self, name: str | None = None, op: str | None = None) -> list[Node]:
        """Nodes in graph order, optionally filtered by name and/or ggml op name."""
        return [n for n in self.nodes if (name is None or n.name == name) and (op is None or n.op == op)]

    def node(self, name: str, op: str | None = None, k: int | None = None) -> Node:
        """The unique node with this name (and op, and occurrence k); KeyError otherwise."""
        found = [n for n in self.find(name, op) if k is None or n.k == k]
        if len(found) != 1:
            have = [(n.key, n.op) for n in self.find(name)]
            raise KeyError(f"step {self.index}: {'no' if not found else 'several'} node {name!r} "
                           f"op={op} k={k}; nodes with that name: {have}")
        return found[0]

    def logits_match(self, logits: np.ndarray) -> bool:
        """True if float32 logits [n_tokens, n_vocab] of this step are llama.cpp's bit for bit."""
        return array_sha256(np.asarray(logits, np.float32), "f32") == self.logits_sha256


@dataclass(frozen=True)
class Scenario:
    """One fresh llama.cpp context: settings, tokens, and its steps (micro-batches) in order."""

    name: str
    what: str
    # n_ctx, n_batch, n_ubatch, n_threads (used as both n_threads and n_threads_batch), flash_attn
    settings: dict[str, Any]
    n_ctx: int  # as llama.cpp set it
    tokens: tuple[int, ...]  # prompt then the greedy decode tokens
    n_prompt: int
    n_decode: int
    logits_same_without_cb: bool  # observing every node did not change the logits
    steps: tuple[Step, ...]

    @property
    def n_threads(self) -> int:
        return int(self.settings["n_threads"])

    @property
    def flash_attn(self) -> bool:
        return bool(self.settings["flash_attn"])

    @property
    def n_ubatch(self) -> int:
        return int(self.settings["n_ubatch"])

    def step_tokens(self, step: Step) -> list[int]:
        """The tokens fed in `step`."""
        return list(self.tokens[step.positions[0]:step.positions[-1] + 1])


@dataclass(frozen=True)
class ExactGolden:
    """A loaded file: model provenance and scenarios."""

    path: Path
    arch: str
    wtype: str
    spec: dict[str, Any]  # qdbg.synth.SynthSpec.to_dict()
    quantize: dict[str, Any]
    build: dict[str, str]  # llama-cpp-python / ggml versions, llama_print_system_info()
    gguf_tensors: dict[str, dict[str, Any]]  # name -> {type, shape, sha256} of the quantized file
    # name -> {type, ne, buffer: the buffer its MUL_MAT reads (CPU_REPACK / CPU_Mapped),
    #          buffer_by_use: {consumer node name: buffer}} -- tied token_embd.weight is CPU_Mapped
    #          for `embd` (GET_ROWS) but a CPU_REPACK duplicate for `result_output` in Q4_0/Q4_K
    weights: dict[str, dict[str, Any]]
    qdbg_regenerates: bool
    scenarios: tuple[Scenario, ...]

    def weight_buffer(self, weight: str, node_name: str) -> str:
        """Buffer type (CPU_REPACK / CPU_Mapped) of `weight` as read by the node named node_name."""
        return self.weights[weight]["buffer_by_use"][node_name]

    def scenario(self, name: str) -> Scenario:
        for s in self.scenarios:
            if s.name == name:
                return s
        raise KeyError(f"{self.path.name}: no scenario {name!r}; have {[s.name for s in self.scenarios]}")

    def __repr__(self) -> str:
        return f"ExactGolden({self.path.name}: {len(self.scenarios)} scenarios)"


def _step(i: int, d: dict[str, Any], z: Any, pre: str) -> Step:
    sha, head, tot = z[f"{pre}/sha256"], z[f"{pre}/head"], z[f"{pre}/sum"]
    nodes = []
    for j, (name, k, op, typ, ne, srcs, params) in enumerate(d["nodes"]):
        has = bool(sha[j].any())
        n_head = min(4, int(np.prod(ne)))
        nodes.append(Node(name, int(k), op, typ, tuple(int(x) for x in ne), tuple(srcs), tuple(params),
                          bytes(sha[j]).hex() if has else None,
                          tuple(float(x) for x in head[j, :n_head]) if has else None,
                          float(tot[j]) if has else None))
    return Step(i, tuple(d["positions"]), tuple(d["n_kv"]), tuple(nodes), d["logits_sha256"],
                tuple(int(x) for x in z[f"{pre}/top_ids"]), tuple(float(x) for x in z[f"{pre}/top_logits"]))


def load_exact_golden(path: str | Path) -> ExactGolden:
    """Read one exact golden .npz."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as npz:
        z = {k: npz[k] for k in npz.files}
    m = json.loads(str(z["manifest"]))
    if m.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: exact golden format {m.get('format')!r}, expected {FORMAT_VERSION}")
    scenarios = tuple(
        Scenario(s["name"], s["what"], s["settings"], int(s["n_ctx_actual"]), tuple(s["tokens"]),
                 int(s["n_prompt"]), int(s["n_decode"]), bool(s["logits_same_without_cb"]),
                 tuple(_step(i, st, z, f"s/{s['name']}/{i}") for i, st in enumerate(s["steps"])))
        for s in m["scenarios"])
    return ExactGolden(path, m["arch"], m["wtype"], m["spec"], m["quantize"], m["build"],
                       m["gguf_tensors"], m["weights"], bool(m["qdbg_regenerates"]), scenarios)


def exact_golden_files(directory: str | Path = EXACT_DIR) -> list[Path]:
    """All exact golden files, sorted (<arch>-<wtype>.npz)."""
    return sorted(Path(directory).glob("*.npz"))


def model_mismatches(golden: ExactGolden, gguf_path: str | Path) -> list[str]:
    """Tensors of `gguf_path` whose type or raw-byte sha256 differ from the file llama.cpp ran."""
    from qdbg.model import Model

    m = Model(Path(gguf_path))
    want = golden.gguf_tensors
    bad = sorted(set(want) ^ set(m.tensors))
    for name, info in m.tensors.items():
        if name in want:
            if info.qtype.name != want[name]["type"]:
                bad.append(f"{name}: type {info.qtype.name} != {want[name]['type']}")
            elif hashlib.sha256(m.gguf.raw(name).tobytes()).hexdigest() != want[name]["sha256"]:
                bad.append(f"{name}: bytes differ")
    return bad


def rebuild_model(golden: ExactGolden, out_dir: str | Path, cache: Any = None) -> Path:
    """Write the golden's model with qdbg.synth into out_dir and prove it is llama.cpp's file
    (every tensor's type and bytes); returns its path. `cache`: a qdbg.synth.SynthCache to share."""
    from qdbg.synth import SynthSpec, write_gguf

    path = Path(out_dir) / f"{golden.arch}-{golden.wtype}.gguf"
    if not path.exists():
        write_gguf(SynthSpec.from_dict(golden.spec), path, golden.wtype, cache=cache)
    bad = model_mismatches(golden, path)
    if bad:
        raise ValueError(f"{path.name} is not the model llama.cpp ran for {golden.path.name}: {bad[:5]}")
    return path
