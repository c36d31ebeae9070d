"""Benchmark model pairs: synthetic F32 files quantized by llama.cpp itself, cached outside the repo.

    python bench/models.py            # builds (or finds) both pairs and prints their paths

Each pair is a `qdbg.synth` F32 file of a real model's shape quantized to Q4_K_M and Q5_K_M with
llama.cpp's own `llama_model_quantize` (tools/llama_oracle.py). Files live under
$QDBG_BENCH_CACHE (default ~/.cache/qdbg/bench), keyed by shape, and are built once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qdbg.synth import SynthSpec, write_gguf

ROOT = Path(__file__).resolve().parent.parent

# name -> SynthSpec of the model's shape (random weights)
PAIRS: dict[str, SynthSpec] = {
    "smollm2": SynthSpec(arch="llama", n_vocab=49152, n_embd=576, n_layer=30, n_head=9, n_head_kv=3,
                         head_dim=64, n_ff=1536, n_ctx=2048, seed=1),
    # the same width twice as deep: peak RSS must not grow with the depth
    "smollm2_deep": SynthSpec(arch="llama", n_vocab=49152, n_embd=576, n_layer=60, n_head=9, n_head_kv=3,
                              head_dim=64, n_ff=1536, n_ctx=2048, seed=1),
    "tinyllama": SynthSpec(arch="llama", n_vocab=32000, n_embd=2048, n_layer=22, n_head=32, n_head_kv=4,
                           head_dim=64, n_ff=5632, n_ctx=2048, seed=2),
}
FTYPES = ("Q4_K_M", "Q5_K_M")


def emit(lines: list[str], out: str | None) -> None:
    """Print a bench script's Markdown section, and write it to `out` if given (merged into
    BENCHMARKS.md by hand)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)


def precompile() -> None:
    """Byte-compile qdbg's sources (as `pip install` does), so that a measured `qdbg` process loads
    .pyc files instead of compiling every module, also where PYTHONDONTWRITEBYTECODE is set (it
    stops writing .pyc files, not reading them)."""
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "qdbg"), quiet=1)


def cache_dir() -> Path:
    """Where benchmark models are kept ($QDBG_BENCH_CACHE or ~/.cache/qdbg/bench)."""
    env = os.environ.get("QDBG_BENCH_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qdbg" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    return base


def build_pair(name: str, log=print) -> tuple[Path, Path]:
    """Paths of the (Q4_K_M, Q5_K_M) pair `name`, building any missing file (slow the first time)."""
    spec = PAIRS[name]
    d = cache_dir()
    out = [d / f"{name}-{ft}.gguf" for ft in FTYPES]
    if all(p.exists() for p in out):
        return out[0], out[1]
    sys.path.insert(0, str(ROOT / "tools"))
    import llama_oracle  # noqa: E402  (tools/ script; imports llama_cpp)

    src = d / f"{name}-F32.gguf"
    if not src.exists():
        log(f"writing {src} (synthetic F32)")
        write_gguf(spec, src, "F32")
    for ft, p in zip(FTYPES, out):
        if not p.exists():
            log(f"quantizing {p.name} with llama.cpp")
            tmp = p.with_suffix(".tmp")
            llama_oracle.quantize(str(src), str(tmp), ft, nthread=2)
            tmp.rename(p)
    src.unlink()  # the F32 source is only needed to quantize
    return out[0], out[1]


if __name__ == "__main__":
    for n in PAIRS:
        print(n, *build_pair(n))
