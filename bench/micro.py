"""Micro benchmarks (bench/run.py appends them): each a ratio against a baseline measured in the same run.

- open:        qdbg.gguf_file.GGUFFile vs gguf-py's GGUFReader on a file with a 262,144-token vocab
- dequantize:  qdbg.quant.dequantize vs gguf.quants.dequantize (same kernels, our chunking)
- forward:     one ggml-mode forward pass vs an f32-mode pass of the same model (the cost of
               emulating llama.cpp's activation quantization), and per-token decode vs prompt
- memory:      peak weight-cache bytes with a budget vs an unbounded cache on the same run
Timings are the best of several repeats (min), on whatever machine runs this.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFWriter
from gguf import quants as gq

from qdbg.engine.forward import Engine
from qdbg.gguf_file import GGUFFile
from qdbg.model import Model
from qdbg.quant import dequantize, quantize
from qdbg.synth import SynthSpec, write_gguf

ROOT = Path(__file__).resolve().parent.parent


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def big_vocab_file(d: Path) -> Path:
    p = d / "vocab262k.gguf"
    w = GGUFWriter(str(p), "llama")
    w.add_token_list([f"tok{i}" for i in range(262144)])
    w.add_token_scores([float(i) for i in range(262144)])
    w.add_tensor("x", np.zeros((4, 32), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return p


def rows() -> list[str]:
    """The micro rows as Markdown table lines."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        f = big_vocab_file(d)
        ours = best(lambda: GGUFFile(f).close())
        base = best(lambda: GGUFReader(f), repeat=1)
        rows.append(("open, 262k-token vocab", "GGUFReader", base, ours))

        rng = np.random.default_rng(0)
        w = rng.standard_normal((2048, 2048)).astype(np.float32)
        for qt in (QT.Q4_K, QT.Q6_K, QT.Q8_0):
            raw = quantize(w, qt)
            ours = best(lambda: dequantize(raw, qt, w.shape))
            base = best(lambda: gq.dequantize(raw, qt))
            rows.append((f"dequantize 2048x2048 {qt.name}", "gguf.quants", base, ours))

        spec = SynthSpec(arch="llama", n_embd=512, n_ff=1536, n_layer=4, n_vocab=2048)
        path = write_gguf(spec, d / "m.gguf", "Q4_K_M")
        m = Model(path)
        toks = list(range(1, 33))
        Engine(m).logits(toks)  # warm the weight cache
        f32 = best(lambda: Engine(m, "f32").logits(toks))
        ggml = best(lambda: Engine(m, "ggml").logits(toks))
        rows.append(("forward 32 tokens, ggml mode", "f32 mode", f32, ggml))

        def decode() -> None:
            e = Engine(m)
            e.logits(toks[:1])
            for t in toks[1:]:
                e.logits([t])

        rows.append(("32 tokens one by one (KV cache)", "one 32-token batch", ggml, best(decode, 1)))

        big = Model(path, cache_bytes=1 << 62)
        Engine(big, "ggml").logits(toks[:2])
        small = Model(path, cache_bytes=4 << 20)
        Engine(small, "ggml").logits(toks[:2])
        mem = [("weight cache (ggml mode), 4 MiB budget", "unbounded", big.cache.used, small.cache.used)]

    lines = ["Micro benchmarks (bench/micro.py): each ratio divides the baseline by qdbg's time measured in "
             "the same run (above 1: qdbg is faster).", "",
             "| measure | baseline | baseline s | qdbg s | speed-up |", "|---|---|---|---|---|"]
    for name, bname, b, o in rows:
        lines.append(f"| {name} | {bname} | {b:.3f} | {o:.3f} | {b / o:.2f}x |")
    lines += ["", "| memory | baseline | baseline bytes | qdbg bytes | ratio |", "|---|---|---|---|---|"]
    for name, bname, b, o in mem:
        lines.append(f"| {name} | {bname} | {b} | {o} | {o / b:.3f} |")
    return lines
