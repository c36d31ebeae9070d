"""Print llama.cpp's top-1 token id (then its logit) at the last position of a token prompt.

Oracle only (imports llama_cpp, i.e. llama-cpp-python, through tools/llama_oracle.py; tests run it
in a subprocess and skip without it). CPU with the default repacking, flash attention off, F16 KV
cache, n_ctx 512, the prompt evaluated as one batch (llama_oracle.record, no nodes kept).

Usage: python tools/llama_top1.py MODEL.gguf 1,17,230
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llama_oracle import record

    tokens = [int(t) for t in argv[1].split(",")]
    rec = record(argv[0], tokens, n_decode=0, n_ctx=512, keep=lambda name, op: False)
    row = np.asarray(rec["logits"][-1], dtype=np.float32)
    i = int(np.argmax(row))
    print(i, repr(float(row[i])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
