"""Check `qdbg scan` against llama.cpp on real files: the flip positions of every prompt.

    qdbg scan A.gguf B.gguf --prompts prompts.txt --json > scan.json
    python tools/check_scan_llama_cpp.py A.gguf B.gguf prompts.txt scan.json

Needs llama-cpp-python; llama.cpp evaluates each prompt (one thread, flash attention off, as the
scan's defaults on a 2-core machine) with every position's logits, and its per-position argmax
of A and B must differ exactly where the scan says the top-1 flips. Plain-text prompt files only.
"""
import json, sys, numpy as np, llama_cpp as L
from qdbg.model import Model
a_path, b_path, prompts, scan_json = sys.argv[1:5]
tok = Model(a_path).tokenizer
def all_logits(path, ids):
    llm = L.Llama(model_path=path, n_ctx=512, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)
    llm.eval(ids); return np.array(llm.scores[:len(ids)], np.float32)
scan = {p["index"]: p["flips"] for p in json.load(open(scan_json))["prompts"]}
ok = 0
lines = [l for l in open(prompts).read().splitlines() if l.strip()]
for i, text in enumerate(lines):
    ids = tok.encode(text)
    la, lb = all_logits(a_path, ids), all_logits(b_path, ids)
    flips = [int(p) for p in np.flatnonzero(la.argmax(1) != lb.argmax(1))]
    print(i, "llama.cpp", flips, "qdbg scan", scan[i], "equal" if flips == scan[i] else "DIFFER")
    ok += flips == scan[i]
print(f"{ok}/{len(lines)} prompts: identical flip positions")
