"""Compare qdbg's exact mode with llama.cpp on a real GGUF file, logit by logit, bit for bit.

Needs llama-cpp-python (the wheel exact mode reproduces: `python tools/llama_build_info.py` says
which build you have). llama.cpp evaluates the prompt (chat-templated with --chat) in micro-batches
of --ubatch, then --decode greedy tokens one at a time, with every position's logits kept; qdbg
runs the same tokens with the same settings. Prints how many rows of logits are bit-identical.

    python tools/compare_llama_cpp.py model.gguf --prompt "Hello" --chat --decode 3 \
        [--flash-attn on] [--threads 2] [--ubatch 16] [--ctx-size 512]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", default="Hello, what is the capital of France?")
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--decode", type=int, default=3)
    ap.add_argument("--flash-attn", choices=("on", "off"), default="off")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--ctx-size", type=int, default=512)
    args = ap.parse_args(argv)

    import llama_cpp as L

    from qdbg.engine.forward import Engine
    from qdbg.model import Model
    from qdbg.numerics import RunSettings

    m = Model(args.model)
    tok = m.tokenizer
    text = tok.render_chat([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode(text)
    fa = args.flash_attn == "on"
    llm = L.Llama(model_path=args.model, n_ctx=args.ctx_size, n_threads=args.threads,
                  n_threads_batch=args.threads, n_batch=args.ubatch, n_ubatch=args.ubatch,
                  logits_all=True, verbose=False, flash_attn=fa)
    llm.eval(ids)
    rows = [np.array(llm.scores[:len(ids)], np.float32)]
    seq = list(ids)
    for _ in range(args.decode):
        nxt = int(np.argmax(rows[-1][-1]))
        seq.append(nxt)
        llm.eval([nxt])
        rows.append(np.array(llm.scores[len(seq) - 1:len(seq)], np.float32))
    ref = np.concatenate(rows)
    settings = RunSettings(n_ubatch=args.ubatch, n_ctx=args.ctx_size, flash_attn=fa, n_threads=args.threads)
    ours = Engine(m, "exact", settings=settings).logits(seq, decode=args.decode)
    eq = (ours.view(np.uint32) == ref.view(np.uint32)).all(axis=1)
    print(f"{args.model}: {len(seq)} tokens ({len(ids)} prompt + {args.decode} decoded), flash attention "
          f"{args.flash_attn}, {args.threads} thread(s), ubatch {args.ubatch}: {int(eq.sum())} of {len(eq)} "
          f"logit rows bit-identical; max |diff| {float(np.abs(ours - ref).max()):.3g}")
    return 0 if eq.all() else 1


if __name__ == "__main__":
    sys.exit(main())
