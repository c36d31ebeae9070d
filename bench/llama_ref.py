"""llama.cpp side of the benchmark: load each GGUF and evaluate the same tokens, then exit.

    python bench/llama_ref.py A.gguf B.gguf --tokens 1,2,3 [--threads N]

Run as its own process by bench/run.py (process start to exit, peak RSS), as `qdbg run` is:
llama-cpp-python with its defaults (CPU, n_ubatch 512, F16 KV cache, flash attention off),
context 512, each file loaded, the prompt evaluated in one llama_decode, the model freed.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ctx", type=int, default=512)
    a = ap.parse_args()
    from llama_cpp import Llama

    toks = [int(t) for t in a.tokens.split(",")]
    for path in a.models:
        kw = {} if a.threads is None else {"n_threads": a.threads, "n_threads_batch": a.threads}
        llm = Llama(model_path=path, n_ctx=a.ctx, verbose=False, **kw)
        llm.eval(toks)
        top = int(llm.scores[len(toks) - 1].argmax())
        print(path, "top1", top)
        llm.close()


if __name__ == "__main__":
    main()
