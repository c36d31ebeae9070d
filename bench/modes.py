"""The numeric modes' cost: one prompt pass of a SmolLM2-135M-sized model in exact, the retired
ggml mode (the default before exact) and f32.

    python bench/modes.py [--out FILE.md]

qdbg.synth llama with SmolLM2-135M's shapes (n_embd 576, 30 layers, 9/3 heads, n_ff 1536, vocab
49152) written as Q4_K_M; 14 tokens, one micro-batch. `first` is a fresh Model and Engine (exact:
kernels loaded from the numba cache; ggml/f32: every matrix dequantized); `again` is a second pass
on a new Engine over the same Model (ggml/f32 reuse their dequantized cache). Best of 3.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qdbg.engine.forward import Engine  # noqa: E402
from qdbg.model import Model  # noqa: E402
from qdbg.synth import SynthSpec, write_gguf  # noqa: E402
import models as bench_models  # noqa: E402

SMOLLM2 = dict(arch="llama", n_embd=576, n_layer=30, n_head=9, n_head_kv=3, head_dim=64, n_ff=1536,
               n_vocab=49152)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="also write the Markdown section here")
    args = ap.parse_args()
    toks = list(range(1, 15))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = write_gguf(SynthSpec(**SMOLLM2), Path(d) / "smol-Q4_K_M.gguf", "Q4_K_M")
        Engine(Model(path), "exact").logits(toks)  # compile / load the kernels once
        for mode in ("exact", "ggml", "f32"):
            first, again = [], []
            for _ in range(3):
                t = time.perf_counter()
                m = Model(path)
                Engine(m, mode).logits(toks)
                first.append(time.perf_counter() - t)
                t = time.perf_counter()
                Engine(m, mode).logits(toks)
                again.append(time.perf_counter() - t)
            rows.append((mode, min(first), min(again)))
    base = dict((m, (f, a)) for m, f, a in rows)["ggml"]
    lines = [f"Numeric modes, one 14-token pass of a SmolLM2-135M-sized Q4_K_M model (`python bench/modes.py`, "
             f"{platform.machine()}, Python {platform.python_version()}); ratio = ggml (the default before "
             f"exact) over the mode, above 1 is faster:", "",
             "| mode | first pass s | again s | vs ggml, first | vs ggml, again |", "|---|---|---|---|---|"]
    for mode, f, a in rows:
        lines.append(f"| {mode} | {f:.3f} | {a:.3f} | {base[0] / f:.2f}x | {base[1] / a:.2f}x |")
    bench_models.emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
