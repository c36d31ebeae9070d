"""`qdbg scan` throughput: prompts per second on a SmolLM2-135M-sized synthetic pair.

    python bench/scan.py [--prompts 16] [--out FILE.md]

The pair: qdbg.synth llama with SmolLM2-135M's shapes (n_embd 576, 30 layers, 9 heads / 3 KV heads,
n_ff 1536, vocab 49152), written as Q4_K_M and Q5_K_M. The prompts are short sentences (10-20
tokens each). Each run is what `qdbg scan --workers N` does: 1 worker runs inline in this process,
2 workers spawn two processes that open the models once each. Wall time includes starting the
workers and opening the models; `steady` leaves out the first prompt each worker takes. Prints a
Markdown table, and writes it to --out if given (the lead merges it into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qdbg.scan import ScanConfig  # noqa: E402
from qdbg.scan.prompts import PromptItem  # noqa: E402
from qdbg.scan.runners import run_inline, run_processes  # noqa: E402
from qdbg.synth import SynthSpec, write_family  # noqa: E402
import models as bench_models  # noqa: E402

SMOLLM2 = dict(arch="llama", n_embd=576, n_layer=30, n_head=9, n_head_kv=3, head_dim=64, n_ff=1536,
               n_vocab=49152, n_ctx=2048)
SENTENCES = [
    "The capital of France is", "Once upon a time there was a little robot who",
    "Water boils at one hundred degrees", "The quick brown fox jumps over the lazy dog",
    "In 1969 the first humans landed on", "A prime number is a number that",
    "The best way to learn a language is", "My favourite colour is blue because",
    "Photosynthesis turns sunlight into", "The stock market fell sharply today after",
    "To bake bread you need flour, water and", "The meeting has been moved to Thursday",
    "Quantization reduces the size of a model by", "She opened the door and saw",
    "The recipe calls for two cups of", "Tomorrow the weather will be",
    "Python is a programming language that", "The train to London leaves at",
    "Every morning he walks his dog in the", "The theory of relativity says that",
]


def scan_rate(cfg: ScanConfig, items: list[PromptItem], workers: int) -> dict:
    t0 = time.perf_counter()
    run = run_inline(cfg, items) if workers == 1 else run_processes(cfg, items, workers)
    results = list(run)
    wall = time.perf_counter() - t0
    errs = [r.error for r in results if r.error]
    assert not errs, errs
    # steady state: the per-prompt times, less each worker's first (model open, first dequantization)
    secs = sorted(r.seconds for r in results)
    steady = sum(secs[:len(secs) - workers]) / workers if len(secs) > workers else float("nan")
    n_steady = len(secs) - workers
    return {"workers": workers, "prompts": len(results), "wall": wall, "rate": len(results) / wall,
            "steady_rate": n_steady / steady if steady == steady and steady > 0 else float("nan"),
            "tokens": sum(r.n_tokens for r in results), "flips": sum(len(r.flips) for r in results)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--out", help="also write the Markdown section here")
    ap.add_argument("--dir", help="where to write the synthetic pair (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.dir or tmp)
        t = time.perf_counter()
        files = write_family(SynthSpec(**SMOLLM2), d, ["Q4_K_M", "Q5_K_M"])
        print(f"wrote the pair in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        cfg = ScanConfig(a=str(files["Q4_K_M"]), b=str(files["Q5_K_M"]))
        items = [PromptItem(i, i + 1, SENTENCES[i % len(SENTENCES)]) for i in range(args.prompts)]
        rows = [scan_rate(cfg, items, w) for w in (1, 2)]
    lines = [
        "### scan: prompts per second (SmolLM2-135M-sized synthetic Q4_K_M vs Q5_K_M, exact mode)",
        "",
        f"{args.prompts} prompts of {rows[0]['tokens'] / args.prompts:.1f} tokens on average; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        "`wall` counts starting the workers and opening the models; `steady` leaves out each worker's "
        "first prompt.",
        "",
        "| workers | prompts | wall (s) | prompts/s (wall) | prompts/s (steady) | flipped positions |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['prompts']} | {r['wall']:.1f} | {r['rate']:.2f} | "
                     f"{r['steady_rate']:.2f} | {r['flips']} |")
    bench_models.emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
