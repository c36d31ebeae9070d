"""Decode steps: one token after a 14-token prompt, one model, qdbg's exact engine against llama.cpp.

    python bench/decode.py [--pair tinyllama] [--steps 8] [--out FILE.md]

For each file of the pair (bench/models.py): qdbg's Engine (exact mode, no session: the kernels'
and the weights' share) evaluates the prompt, then `--steps` single-token passes, each timed;
llama.cpp (llama-cpp-python, 1 thread, as one side of a qdbg session computes) does the same on
the same file in the same process. Best and median step. Also qdbg with QDBG_RESIDENT_BYTES large
enough to keep every weight mapped (the default hands the pages of least recently used weights
back, so a decode step maps every weight again). Prints a Markdown section.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import models as bench_models  # noqa: E402

PROMPT = [1, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300]


def timed_steps(evaluate, steps: int) -> list[float]:
    """Seconds of each of `steps` one-token calls of `evaluate` after the prompt."""
    evaluate(PROMPT)
    out = []
    for i in range(steps):
        t = time.perf_counter()
        evaluate([1400 + i])
        out.append(time.perf_counter() - t)
    return out


def qdbg_steps(path: str, steps: int) -> list[float]:
    from qdbg.engine.forward import Engine
    from qdbg.model import Model

    return timed_steps(Engine(Model(path)).logits, steps)


def llama_steps(path: str, steps: int) -> list[float]:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=512, verbose=False, n_threads=1, n_threads_batch=1)
    try:
        return timed_steps(llm.eval, steps)
    finally:
        llm.close()


def child(what: str, path: Path, steps: int, env: dict[str, str] | None = None) -> list[float]:
    """Each measurement in a process of its own (the engines' page budget is read at import)."""
    r = subprocess.run([sys.executable, __file__, "--child", what, str(path), "--steps", str(steps)],
                       capture_output=True, text=True, env=env, check=True)
    return [float(v) for v in r.stdout.split()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", choices=tuple(bench_models.PAIRS), default="tinyllama")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", help="also write the Markdown section here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, path = args.child
        fn = qdbg_steps if what == "qdbg" else llama_steps
        print(" ".join(f"{v:.6f}" for v in fn(path, args.steps)))
        return 0
    bench_models.precompile()
    pair = bench_models.build_pair(args.pair, log=lambda m: print(m, file=sys.stderr))
    big = dict(os.environ, QDBG_RESIDENT_BYTES=str(8 << 30))
    lines = [f"One decode step (one token after a {len(PROMPT)}-token prompt) of one model, {args.steps} steps, "
             f"best / median (`python bench/decode.py`, {platform.machine()}, Python "
             f"{platform.python_version()}); llama.cpp on 1 thread, as one side of a session computes:", "",
             "| file | qdbg | qdbg, every weight kept mapped | llama.cpp | ratio (default) |",
             "|---|---|---|---|---|"]
    for path in pair:
        q = child("qdbg", path, args.steps)
        qb = child("qdbg", path, args.steps, big)
        ll = child("llama", path, args.steps)
        lines.append(f"| {path.name} | {min(q) * 1e3:.0f} / {statistics.median(q) * 1e3:.0f} ms | "
                     f"{min(qb) * 1e3:.0f} / {statistics.median(qb) * 1e3:.0f} ms | "
                     f"{min(ll) * 1e3:.0f} / {statistics.median(ll) * 1e3:.0f} ms | "
                     f"{statistics.median(q) / statistics.median(ll):.1f}x |")
    bench_models.emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
