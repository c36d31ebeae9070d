"""Prepare the exact kernels before the first op needs them: compile (first run) or load (cached).

numba compiles each kernel the first time it is called and caches the machine code under the
user's cache folder (kernels/nb.py); a fresh install pays that once, about ten seconds for what a
run needs. `warm()` does it up front, one kernel family at a time, through the same
`ExactNumerics` calls the engine makes (so the same specializations: read-only weight bytes,
float32 activations), and tells a `Progress` callback what it is doing. Kernels whose families a
model uses come first (`plan(types)`); `warm_in_background()` runs it in a daemon thread so a UI
can draw its first screen meanwhile (LLVM runs outside the GIL; an op that needs a kernel still
being prepared simply waits for numba's compiler lock).

    from qdbg.numerics.kernels import warmup
    warmup.warm(types, progress=lambda what, done, total: print(what))
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from gguf import GGMLQuantizationType as QT

from qdbg.progress import Progress, report

__all__ = ["FAMILIES", "plan", "warm", "warm_in_background", "is_compiled"]

F32 = np.float32
_KERNEL_DIR = Path(__file__).resolve().parent
_lock = threading.Lock()
_done: set[str] = set()


def _weight(qt: QT, n_out: int, n_in: int):
    from qdbg.engine.weights import Weight
    from qdbg.quant import quantize

    rows = np.random.default_rng(0).standard_normal((n_out, n_in)).astype(F32)
    raw = np.frombuffer(np.ascontiguousarray(quantize(rows, qt)).tobytes(), np.uint8)  # read-only, as a map
    return Weight(f"warmup.{qt.name}", qt, raw=raw, shape=(n_out, n_in), load=lambda: rows)


def _matmul(qt: QT, n_out: int = 8) -> Callable[[], None]:
    def run() -> None:
        from qdbg.numerics.exact import ExactNumerics

        nx = ExactNumerics()
        w = _weight(qt, n_out, 256)
        for n_tok in (1, 8):  # the vec_dot and the batched paths share one compiled kernel
            nx.matmul(np.ones((n_tok, 256), F32), w)

    return run


def _attention() -> None:
    from qdbg.numerics.exact import ExactNumerics

    nx = ExactNumerics()
    n_tok, hd = 3, 64
    q = np.ones((n_tok, 4, hd), F32)
    k = np.ones((n_tok, 2, hd), F32)
    kq = nx.attn_scores(q, k)
    mask = np.zeros((n_tok, n_tok), F32)
    p = nx.softmax(kq, mask, 0.125)
    nx.attn_values(p, k)


def _rope() -> None:
    from qdbg.numerics.exact import ExactNumerics

    nx = ExactNumerics()
    cache = nx.rope_cache(np.arange(3, dtype=np.int64), 64, 10000.0, 1.0)
    nx.rope(np.ones((3, 4, 64), F32), cache, 64, False)


def _glu() -> None:
    from qdbg.numerics.exact import ExactNumerics

    nx = ExactNumerics()
    nx.swiglu(np.ones((2, 32), F32), np.ones((2, 32), F32))


# family -> (what the progress line says, how to prepare it)
FAMILIES: dict[str, tuple[str, Callable[[], None]]] = {
    "kquant": ("K-quant matmul", _matmul(QT.Q4_K)),
    "legacy": ("legacy-quant matmul", _matmul(QT.Q8_0)),
    "float": ("F16/F32 matmul", _matmul(QT.F16)),
    "attention": ("attention products and softmax", _attention),
    "rope": ("RoPE", _rope),
    "glu": ("SwiGLU", _glu),
}
_K = {QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K}
_LEGACY = {QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0}
_FLOAT = {QT.F16, QT.BF16, QT.F32}


def plan(matrix_types: Iterable[QT] | None = None) -> list[str]:
    """Families in the order a forward pass first needs them: the model's matmul types (if given:
    the types of its 2-D weights; None means all), then RoPE, attention, SwiGLU."""
    types = None if matrix_types is None else {QT(t) for t in matrix_types}
    order = []
    for fam, kinds in (("kquant", _K), ("legacy", _LEGACY), ("float", _FLOAT)):
        if types is None or types & kinds:
            order.append(fam)
    return order + ["rope", "attention", "glu"]


def _marker(family: str) -> Path:
    from qdbg.numerics.kernels.nb import cache_dir

    h = hashlib.sha256()
    for p in sorted(_KERNEL_DIR.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return cache_dir() / "warm" / f"{h.hexdigest()[:16]}-{family}"


def is_compiled(family: str) -> bool:
    """Whether this family of these kernel sources was compiled into the cache before."""
    return _marker(family).exists()


def warm(families: Iterable[str] | None = None, progress: Progress | None = None) -> list[str]:
    """Compile or load each family in `families` (default: all, in `plan()` order) not yet prepared
    in this process; returns the ones prepared now. Thread-safe; idempotent."""
    fams = list(families) if families is not None else plan()
    done_now = []
    with _lock:
        todo = [f for f in fams if f not in _done]
        for i, fam in enumerate(todo):
            label, run = FAMILIES[fam]
            marker = _marker(fam)
            verb = "loading" if marker.exists() else "compiling (first run only)"
            report(progress, f"{verb} exact kernels: {label}", i, len(todo))
            run()
            _done.add(fam)
            done_now.append(fam)
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
        if todo:
            report(progress, "exact kernels ready", len(todo), len(todo))
    return done_now


def warm_in_background(families: Iterable[str] | None = None,
                       progress: Progress | None = None) -> threading.Thread:
    """`warm()` in a daemon thread (started); join it to wait. Errors are left to the first real
    use of the kernel, which raises them where they belong."""
    fams = list(families) if families is not None else None

    def run() -> None:
        try:
            warm(fams, progress)
        except Exception:  # noqa: BLE001 (the op that needs the kernel reports it)
            pass

    t = threading.Thread(target=run, name="qdbg-kernel-warmup", daemon=True)
    t.start()
    return t
