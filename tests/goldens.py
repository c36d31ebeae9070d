"""Loader for the llama.cpp fidelity goldens in tests/golden/fidelity/<arch>-<ftype>.npz.

Each file was written by tools/record_golden.py from llama.cpp (llama-cpp-python) running a synthetic
model (qdbg.synth spec in the manifest) on a 7-token prompt (BOS first) plus 3 greedy decode steps.
npz entries: `manifest` (JSON string), `logits` float32 [n_positions, n_vocab], and one array per
recorded graph node, `s<step>/<name>#<k>`, shaped like ggml's ne reversed (4 dims: [ne3, ne2, ne1,
ne0], e.g. ROPE'd Qcur-0 is [1, n_tok, n_head, head_dim]). F16 nodes (the KV-cache views) are
stored as float16 and returned as float32. A node whose data is a plain reshape of another recorded
node has no array; `alias_of` names that node and `tensor()` reshapes it.

k is the occurrence index of a name in one step's graph: llama.cpp gives several nodes one name
(`Qcur-0` is the matmul k=0, its reshape k=1, the RoPE k=2), so ask e.g.
`g.tensor(0, "Qcur-0", op="ROPE")`. Hermetic: numpy and json only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

GOLDEN_DIR = Path(__file__).parent / "golden" / "fidelity"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Node:
    """One recorded llama.cpp graph node (ne in ggml order; `store` is its npz key or None)."""

    name: str
    k: int
    key: str
    op: str
    type: str
    shape: tuple[int, ...]
    srcs: tuple[str, ...]
    src_keys: tuple[str | None, ...]
    src_roots: tuple[str | None, ...]
    op_params: tuple[int, ...]
    store: str | None
    alias_of: str | None


@dataclasses.dataclass(frozen=True)
class Step:
    """One llama_decode call: the prompt batch or a single decode token."""

    kind: str
    positions: tuple[int, ...]
    n_kv: int
    nodes: tuple[Node, ...]


class Golden:
    """A loaded golden file: tokens, logits, and per-step graph nodes with their tensors."""

    def __init__(self, path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.path = path
        self.manifest = manifest
        self.arrays = arrays
        self.arch: str = manifest["arch"]
        self.ftype: str = manifest["ftype"]
        self.spec: dict[str, Any] = manifest["spec"]
        self.tokens: list[int] = list(manifest["tokens"])
        self.n_prompt: int = int(manifest["n_prompt"])
        self.n_vocab: int = int(manifest["n_vocab"])
        self.logits: np.ndarray = arrays["logits"]
        self.gguf_tensors: dict[str, dict[str, Any]] = manifest["gguf"]["tensors"]
        self.steps: list[Step] = [
            Step(s["kind"], tuple(s["positions"]), int(s["n_kv"]),
                 tuple(_node(n) for n in s["nodes"])) for s in manifest["steps"]]

    def __repr__(self) -> str:
        return f"Golden({self.path.name}: {self.arch} {self.ftype}, {len(self.steps)} steps)"

    def n_kv(self, step: int) -> int:
        """KV cells the step's attention spans (padded by llama.cpp, >= real positions)."""
        return self.steps[step].n_kv

    def step_logits(self, step: int) -> np.ndarray:
        """[n_tokens_of_step, n_vocab] logits rows of one step."""
        pos = self.steps[step].positions
        return self.logits[pos[0]:pos[-1] + 1]

    def nodes(self, step: int, name: str | None = None, op: str | None = None) -> list[Node]:
        """Nodes of a step in graph order, optionally filtered by name and/or ggml op name."""
        return [n for n in self.steps[step].nodes
                if (name is None or n.name == name) and (op is None or n.op == op)]

    def node(self, step: int, name: str, op: str | None = None, k: int | None = None) -> Node:
        """The unique node named `name` (and of op `op`, and occurrence `k`); KeyError otherwise."""
        found = [n for n in self.nodes(step, name, op) if k is None or n.k == k]
        if len(found) != 1:
            have = [(n.key, n.op) for n in self.nodes(step, name)]
            what = "no" if not found else "several"
            raise KeyError(f"{self.path.name} step {step}: {what} node {name!r} op={op} k={k}; "
                           f"nodes with that name: {have}")
        return found[0]

    def tensor(self, step: int, name: str, op: str | None = None, k: int | None = None) -> np.ndarray:
        """float32 (or int) array of a node, shape = ne reversed (4 dims)."""
        return self.tensor_by_key(step, self.node(step, name, op, k).key)

    def tensor_by_key(self, step: int, key: str) -> np.ndarray:
        """Array of the node with key `<name>#<k>` in `step`."""
        node = next((n for n in self.steps[step].nodes if n.key == key), None)
        if node is None:
            raise KeyError(f"{self.path.name} step {step}: no node {key!r}")
        if node.alias_of is not None:
            return self.tensor_by_key(step, node.alias_of).reshape(tuple(reversed(node.shape)))
        arr = self.arrays[node.store]  # type: ignore[index]
        return arr.astype(np.float32) if arr.dtype == np.float16 else arr


def _node(d: dict[str, Any]) -> Node:
    return Node(d["name"], int(d["k"]), d["key"], d["op"], d["type"], tuple(d["shape"]),
                tuple(d["srcs"]), tuple(d["src_keys"]), tuple(d["src_roots"]),
                tuple(d["op_params"]), d.get("store"), d.get("alias_of"))


def load_golden(path: str | Path) -> Golden:
    """Read one golden .npz (all arrays loaded eagerly; files are small)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    manifest = json.loads(str(arrays.pop("manifest")))
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: golden format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    return Golden(path, manifest, arrays)


def golden_files(directory: str | Path = GOLDEN_DIR) -> list[Path]:
    """All golden files, sorted (arch-ftype.npz)."""
    return sorted(Path(directory).glob("*.npz"))
