"""Train and export qdbg's built-in demo model: a ~3.7M-parameter Llama on the Python stdlib.

Recording/building tool only (imports torch, and llama_cpp for `check`; neither is ever imported by
qdbg or its tests). It regenerates `qdbg/data/demo-llama-f16.gguf` deterministically:

    nice -n 10 python tools/train_demo_model.py prepare   # corpus list + hash, byte-level BPE, token ids
    nice -n 10 python tools/train_demo_model.py train     # resumable, checkpoints + loss log in --work
    python tools/train_demo_model.py export               # GGUF (F16 2D weights, F32 norms), gguf-py
    python tools/train_demo_model.py check                # llama.cpp: load, tokenize, generate, Q4/Q5 flips
    python tools/train_demo_model.py export --prompt P    # again, recording the chosen flip prompt

Corpus: the top-level `*.py` files of CPython 3.11's standard library (PSF license). Every 20th file
(sorted order, starting at index 7) is held out for validation. Tokenizer: GPT-2 style byte-level
BPE (`tokenizer.ggml.model = gpt2`, `pre = gpt-2`), 2047 learned/byte tokens + `<|endoftext|>`
(BOS = EOS, BOS added). Model: llama.cpp architecture `llama` — RMSNorm, RoPE on adjacent pairs
(llama.cpp "norm" mode, implemented natively so no Q/K permutation is needed), SwiGLU, no biases,
GQA, output tied to the token embedding (no `output.weight`).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import heapq
import json
import math
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT_GGUF = REPO / "qdbg" / "data" / "demo-llama-f16.gguf"
CORPUS_DIR = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
EOT = "<|endoftext|>"

HP: dict[str, float | int | str] = dict(
    seed=20240611, n_vocab=2048, n_ctx=256, n_embd=256, n_ff=768, n_head=4, n_head_kv=2, n_layer=4,
    rope_base=10000.0, rms_eps=1e-5, init_std=0.02,
    steps=700, batch=16, lr=3e-3, lr_min=3e-4, warmup=40, weight_decay=0.1, grad_clip=1.0,
    val_every=100, ckpt_every=50, val_batches=8,
)

# llama.cpp's gpt2 pre-tokenizer, with \p{L} ~ [^\W\d_] and \p{N} ~ \d (exact on ASCII).
PRETOK = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


# ---- corpus ----------------------------------------------------------------------------------

def corpus_files() -> tuple[list[Path], list[Path], str]:
    """(train files, validation files, sha256 over 'name sha256(content)' lines of all files)."""
    files = sorted(CORPUS_DIR.glob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    val = [f for i, f in enumerate(files) if i % 20 == 7]
    return [f for f in files if f not in val], val, h.hexdigest()


# ---- byte-level BPE --------------------------------------------------------------------------

def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (space -> 'Ġ', newline -> 'Ċ')."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def train_bpe(word_counts: Counter, n_tokens: int) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Learn merges until the vocabulary holds n_tokens byte strings; ties broken on the bytes."""
    vocab = [bytes([i]) for i in range(256)]
    index = {v: i for i, v in enumerate(vocab)}
    words = [list(w) for w in word_counts]
    counts = list(word_counts.values())
    pairs: Counter = Counter()
    where: defaultdict = defaultdict(set)
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            pairs[p] += counts[i]
            where[p].add(i)
    heap = [(-c, vocab[a], vocab[b], (a, b)) for (a, b), c in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(vocab) < n_tokens and heap:
        negc, _, _, p = heapq.heappop(heap)
        if pairs.get(p, 0) != -negc or negc == 0:
            continue  # stale heap entry
        merged = vocab[p[0]] + vocab[p[1]]
        if merged not in index:
            index[merged] = len(vocab)
            vocab.append(merged)
        new = index[merged]
        merges.append(p)
        touched = set()
        for i in sorted(where.pop(p)):
            w, c = words[i], counts[i]
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == p:
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            if len(out) == len(w):
                continue
            for q in zip(w, w[1:]):
                pairs[q] -= c
                touched.add(q)
            for q in zip(out, out[1:]):
                pairs[q] += c
                where[q].add(i)
                touched.add(q)
            words[i] = out
        pairs.pop(p, None)
        for q in touched:
            if pairs.get(q, 0) > 0:
                heapq.heappush(heap, (-pairs[q], vocab[q[0]], vocab[q[1]], q))
    return vocab, merges


class BPE:
    """Encoder applying learned merges lowest-rank first inside each pre-token (as llama.cpp does)."""

    def __init__(self, vocab: list[bytes], merges: list[tuple[int, int]]):
        index = {v: i for i, v in enumerate(vocab)}
        self.vocab = vocab
        self.ranks = {p: (r, index[vocab[p[0]] + vocab[p[1]]]) for r, p in enumerate(merges)}
        self.cache: dict[str, list[int]] = {}

    def _word(self, s: str) -> list[int]:
        ids = list(s.encode("utf-8"))
        while len(ids) > 1:
            cands = [(self.ranks[q][0], q) for q in zip(ids, ids[1:]) if q in self.ranks]
            if not cands:
                break
            _, q = min(cands)
            new, out, j = self.ranks[q][1], [], 0
            while j < len(ids):
                if j + 1 < len(ids) and (ids[j], ids[j + 1]) == q:
                    out.append(new)
                    j += 2
                else:
                    out.append(ids[j])
                    j += 1
            ids = out
        return ids

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for m in PRETOK.findall(text):
            if m not in self.cache:
                self.cache[m] = self._word(m)
            out.extend(self.cache[m])
        return out


def cmd_prepare(work: Path) -> None:
    """Learn the BPE on the training files; write tokenizer.json, train_ids.npy, val_ids.npy to work."""
    train, val, digest = corpus_files()
    t0 = time.time()
    wc: Counter = Counter()
    for f in train:
        wc.update(m.encode("utf-8") for m in PRETOK.findall(f.read_text(encoding="utf-8")))
    vocab, merges = train_bpe(wc, int(HP["n_vocab"]) - 1)
    bpe = BPE(vocab, merges)
    eot = len(vocab)

    def stream(files: list[Path]) -> np.ndarray:
        ids: list[int] = []
        for f in files:
            ids += bpe.encode(f.read_text(encoding="utf-8")) + [eot]
        return np.asarray(ids, dtype=np.uint16)

    tr, va = stream(train), stream(val)
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "train_ids.npy", tr)
    np.save(work / "val_ids.npy", va)
    nbytes = sum(f.stat().st_size for f in train)
    meta = dict(corpus_sha256=digest, n_train_files=len(train), n_val_files=len(val),
                val_files=[f.name for f in val], train_tokens=int(tr.size), val_tokens=int(va.size),
                train_bytes=nbytes, vocab=[v.hex() for v in vocab], merges=merges)
    (work / "tokenizer.json").write_text(json.dumps(meta))
    print(f"BPE: {len(vocab)} tokens, {len(merges)} merges, {time.time() - t0:.0f}s; "
          f"train {tr.size} tokens ({nbytes / tr.size:.2f} bytes/token), val {va.size}; corpus {digest}")


# ---- model -----------------------------------------------------------------------------------

def build_model(hp: dict):
    """The torch Llama; parameter names follow GGUF tensor names (dots -> '_' inside a block)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    e, hd = hp["n_embd"], hp["n_embd"] // hp["n_head"]

    def rope(x, cos, sin):
        # [B, T, H, hd] -> pairs (x[2i], x[2i+1]) rotated by pos * base^(-2i/hd)  (llama.cpp NORM mode)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm = nn.Parameter(torch.ones(e))
            self.attn_q = nn.Linear(e, hp["n_head"] * hd, bias=False)
            self.attn_k = nn.Linear(e, hp["n_head_kv"] * hd, bias=False)
            self.attn_v = nn.Linear(e, hp["n_head_kv"] * hd, bias=False)
            self.attn_output = nn.Linear(hp["n_head"] * hd, e, bias=False)
            self.ffn_norm = nn.Parameter(torch.ones(e))
            self.ffn_gate = nn.Linear(e, hp["n_ff"], bias=False)
            self.ffn_up = nn.Linear(e, hp["n_ff"], bias=False)
            self.ffn_down = nn.Linear(hp["n_ff"], e, bias=False)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            h = F.rms_norm(x, (e,), self.attn_norm, hp["rms_eps"])
            q = rope(self.attn_q(h).view(b, t, hp["n_head"], hd), cos, sin).transpose(1, 2)
            k = rope(self.attn_k(h).view(b, t, hp["n_head_kv"], hd), cos, sin).transpose(1, 2)
            v = self.attn_v(h).view(b, t, hp["n_head_kv"], hd).transpose(1, 2)
            g = hp["n_head"] // hp["n_head_kv"]  # query head i reads kv head i // g
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, hd]
            x = x + self.attn_output(a.transpose(1, 2).reshape(b, t, -1))
            h = F.rms_norm(x, (e,), self.ffn_norm, hp["rms_eps"])
            return x + self.ffn_down(F.silu(self.ffn_gate(h)) * self.ffn_up(h))

    class Llama(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token_embd = nn.Embedding(hp["n_vocab"], e)
            self.blk = nn.ModuleList(Block() for _ in range(hp["n_layer"]))
            self.output_norm = nn.Parameter(torch.ones(e))
            pos = torch.arange(hp["n_ctx"], dtype=torch.float64)[:, None]
            theta = pos * hp["rope_base"] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
            self.register_buffer("cos", theta.cos().float()[:, None, :], persistent=False)  # [T, 1, hd/2]
            self.register_buffer("sin", theta.sin().float()[:, None, :], persistent=False)
            for n, p in self.named_parameters():
                if p.dim() == 2:
                    std = hp["init_std"] / (math.sqrt(2 * hp["n_layer"]) if n.endswith(("attn_output.weight", "ffn_down.weight")) else 1)
                    nn.init.normal_(p, 0.0, std)

        def forward(self, ids):
            t = ids.shape[1]
            x = self.token_embd(ids)
            for b in self.blk:
                x = b(x, self.cos[:t], self.sin[:t])
            x = F.rms_norm(x, (e,), self.output_norm, hp["rms_eps"])
            return x @ self.token_embd.weight.T  # tied output

    return Llama()


def lr_at(step: int, hp: dict) -> float:
    """Linear warm-up, then cosine decay from lr to lr_min."""
    if step < hp["warmup"]:
        return hp["lr"] * (step + 1) / hp["warmup"]
    f = (step - hp["warmup"]) / max(1, hp["steps"] - hp["warmup"])
    return hp["lr_min"] + 0.5 * (hp["lr"] - hp["lr_min"]) * (1 + math.cos(math.pi * f))


def batch_at(ids: np.ndarray, step: int, hp: dict, eot: int, salt: int = 0):
    """Deterministic batch for a step: each row is [BOS] + a window at a seeded random offset."""
    import torch

    rng = np.random.default_rng([hp["seed"], salt, step])
    t = hp["n_ctx"]
    offs = rng.integers(0, ids.size - t, size=hp["batch"])
    y = np.stack([ids[o:o + t] for o in offs]).astype(np.int64)
    x = np.concatenate([np.full((hp["batch"], 1), eot), y[:, :-1]], axis=1)
    return torch.from_numpy(x), torch.from_numpy(y)


def cmd_train(work: Path, stop_after: int = 0) -> None:
    """Train (resuming from work/ckpt.pt if present); log step, train loss, held-out loss, seconds to loss.tsv."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(HP["seed"])
    torch.use_deterministic_algorithms(True)
    tr, va = np.load(work / "train_ids.npy"), np.load(work / "val_ids.npy")
    eot = HP["n_vocab"] - 1
    model = build_model(HP)
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": HP["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=HP["lr"], betas=(0.9, 0.95))
    ckpt, start, elapsed = work / "ckpt.pt", 0, 0.0
    if ckpt.exists():
        st = torch.load(ckpt)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start, elapsed = st["step"], st["elapsed"]
        print(f"resumed at step {start}")
    log = open(work / "loss.tsv", "a")

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            ls = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                  for x, y in (batch_at(va, i, HP, eot, salt=1) for i in range(HP["val_batches"]))]
        model.train()
        return float(np.mean(ls))

    t0 = time.time()
    for step in range(start, min(HP["steps"], stop_after or HP["steps"])):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, HP)
        x, y = batch_at(tr, step, HP, eot)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HP["grad_clip"])
        opt.step()
        done = step + 1
        vl = val_loss() if done % HP["val_every"] == 0 or done == HP["steps"] else float("nan")
        now = elapsed + time.time() - t0
        log.write(f"{done}\t{loss.item():.4f}\t{vl:.4f}\t{now:.0f}\n")
        log.flush()
        if done % HP["ckpt_every"] == 0 or done == HP["steps"]:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done, "elapsed": now},
                       work / "ckpt.tmp")
            (work / "ckpt.tmp").replace(ckpt)
            print(f"step {done} loss {loss.item():.4f} val {vl:.4f} {now:.0f}s", flush=True)


# ---- export ----------------------------------------------------------------------------------

def cmd_export(work: Path, out: Path, prompt: str | None) -> None:
    """Write the final checkpoint as a llama.cpp `llama` GGUF with tokenizer and provenance metadata."""
    import gguf
    import torch

    tok = json.loads((work / "tokenizer.json").read_text())
    st = torch.load(work / "ckpt.pt")
    rows = {int(r[0]): r for r in (x.split("\t") for x in (work / "loss.tsv").read_text().split("\n") if x)}
    train_loss = float(np.mean([float(rows[s][1]) for s in range(HP["steps"] - 49, HP["steps"] + 1)]))
    val_loss = float(rows[HP["steps"]][2])
    b2u = byte_to_unicode()
    vocab = [bytes.fromhex(v) for v in tok["vocab"]]
    tokens = ["".join(b2u[b] for b in v) for v in vocab] + [EOT]
    ttype = [int(gguf.TokenType.NORMAL)] * len(vocab) + [int(gguf.TokenType.CONTROL)]
    merges = [f"{tokens[a]} {tokens[b]}" for a, b in tok["merges"]]
    hp = HP
    desc = (f"qdbg demo model: {hp['n_layer']}-layer Llama trained from scratch on the Python {CORPUS_DIR.name.removeprefix('python')} "
            f"standard library sources (PSF license) by tools/train_demo_model.py; seed {hp['seed']}, "
            f"corpus sha256 {tok['corpus_sha256']}, {hp['steps']} steps, train loss {train_loss:.4f} (mean of "
            f"the last 50 steps), held-out loss {val_loss:.4f} (nats/token)")
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("qdbg demo llama (stdlib)")
    w.add_description(desc)
    w.add_license("MIT")
    w.add_size_label("3.7M")
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_key_length(hp["n_embd"] // hp["n_head"])
    w.add_value_length(hp["n_embd"] // hp["n_head"])
    w.add_rope_dimension_count(hp["n_embd"] // hp["n_head"])
    w.add_rope_freq_base(hp["rope_base"])
    w.add_layer_norm_rms_eps(hp["rms_eps"])
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(ttype)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_uint32("qdbg.demo.seed", hp["seed"])
    w.add_string("qdbg.demo.corpus", f"{CORPUS_DIR}/*.py (PSF-2.0), every 20th from index 7 held out")
    w.add_string("qdbg.demo.corpus_sha256", tok["corpus_sha256"])
    w.add_string("qdbg.demo.hparams", json.dumps(hp, sort_keys=True))
    w.add_float32("qdbg.demo.final_train_loss", train_loss)
    w.add_float32("qdbg.demo.final_val_loss", val_loss)
    w.add_string("qdbg.demo.torch", torch.__version__)
    if prompt:  # qdbg demo opens on this prompt (a Q4_K_M/Q5_K_M top-1 flip found by `check`)
        w.add_string("qdbg.demo.prompt", prompt)
    for name, p in st["model"].items():
        a = p.float().numpy()
        parts = name.split(".")
        if parts[0] == "blk":  # blk.3.attn_q.weight / blk.3.attn_norm
            name = f"blk.{parts[1]}.{parts[2]}.weight"
        elif not name.endswith(".weight"):
            name += ".weight"
        w.add_tensor(name, a.astype(np.float16) if a.ndim == 2 else a.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({out.stat().st_size} bytes)")


# ---- llama.cpp check -------------------------------------------------------------------------

GEN_PROMPTS = ["def ", "def", "import os\n", "class", "    def __init__(self", "for i in range(", "if __name__ =="]
HAND_PROMPTS = ["def ", "import ", "import os\n", "from ", "class ", "return ", "    return ", "self.", "if ",
                "    if ", "for ", "while ", "try:\n    ", "except ", "raise ", "print(", "with open(", "x = ",
                "def __init__(self", "def __repr__(self):\n    return ", "#", "# ", "\"\"\"", "lambda ", "yield ",
                "assert ", "elif ", "else:\n    ", "@property\n", "@", "os.path.", "sys.", "len(", "isinstance(",
                "self._", "None", "True", "0", "1", "[", "{", "(", "'", "def get", "def _", "args", "kwargs",
                # found by a wider search over all stdlib line prefixes (see qdbg/data/DEMO_MODEL.md)
                "def lru_cache", "def input", "    if j ==", "    if unicodedata.", "    def strip", "place"]


def _logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at the last position, the prompt evaluated from scratch as one batch."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)


def _greedy(llm, prompt: str, n: int) -> str:
    ids = llm.tokenize(prompt.encode(), add_bos=True)
    out: list[int] = []
    for _ in range(n):
        t = int(np.argmax(_logits(llm, ids + out)))
        if t == llm.token_eos():
            break
        out.append(t)
    return prompt + llm.detokenize(out).decode("utf-8", "replace")


def _candidates(val_files: list[str], limit: int = 1500) -> list[str]:
    """Hand prompts plus line prefixes (pre-token boundaries, <= 32 chars) of held-out files, evenly thinned."""
    seen, out = set(HAND_PROMPTS), []
    for name in val_files:
        for line in (CORPUS_DIR / name).read_text(encoding="utf-8").splitlines():
            pre = ""
            for piece in PRETOK.findall(line.rstrip()):
                pre += piece
                if len(pre) > 32:
                    break
                if pre.strip() and pre not in seen:
                    seen.add(pre)
                    out.append(pre)
    step = max(1, len(out) // limit)
    return HAND_PROMPTS + out[::step][:limit]


def cmd_check(work: Path, f16: Path) -> None:
    """llama.cpp loads and tokenizes the file, greedy samples, then Q4_K_M/Q5_K_M top-1 flips (flips.md)."""
    import llama_cpp as L

    tok = json.loads((work / "tokenizer.json").read_text())
    kw = dict(n_ctx=int(HP["n_ctx"]), n_threads=1, n_batch=256, verbose=False, seed=0, logits_all=True)
    llm = L.Llama(str(f16), **kw)
    for text in ["import os\n\ndef main(argv):\n    return 0\n", "    def __init__(self, name=None):"]:
        ids = llm.tokenize(text.encode(), add_bos=True)
        print(repr(text), "->", [llm.detokenize([i]).decode("utf-8", "replace") for i in ids])
    for p in GEN_PROMPTS:
        print(f"--- greedy from {p!r} (F16):\n{_greedy(llm, p, 48)}")
    quants = {}
    for name, ftype in (("Q4_K_M", L.LLAMA_FTYPE_MOSTLY_Q4_K_M), ("Q5_K_M", L.LLAMA_FTYPE_MOSTLY_Q5_K_M)):
        path = work / f"demo-{name}.gguf"
        params = L.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = 1
        if L.llama_model_quantize(str(f16).encode(), str(path).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"quantizing to {name} failed")
        quants[name] = L.Llama(str(path), **kw)
        print(f"{name}: {path.stat().st_size} bytes")
    a, b = quants["Q4_K_M"], quants["Q5_K_M"]
    cands = _candidates(tok["val_files"])
    flips, agree_f16 = [], {"Q4_K_M": 0, "Q5_K_M": 0}
    for p in cands:
        ids = a.tokenize(p.encode(), add_bos=True)
        la, lb, lf = _logits(a, ids), _logits(b, ids), _logits(llm, ids)
        ta, tb, tf = int(la.argmax()), int(lb.argmax()), int(lf.argmax())
        agree_f16["Q4_K_M"] += ta == tf
        agree_f16["Q5_K_M"] += tb == tf
        if ta != tb:
            flips.append((min(la[ta] - la[tb], lb[tb] - lb[ta]), p, len(ids), ta, float(la[ta] - la[tb]),
                          tb, float(lb[tb] - lb[ta]), tf))
    print(f"{len(cands)} prompts; top-1 agrees with F16: {agree_f16}; Q4_K_M vs Q5_K_M flips: {len(flips)}")
    piece = lambda t: llm.detokenize([t]).decode("utf-8", "replace")  # noqa: E731
    rows = ["| prompt | n_tok | Q4_K_M top-1 | margin | Q5_K_M top-1 | margin | F16 top-1 |", "|---|---|---|---|---|---|---|"]
    for m, p, n, ta, ma, tb, mb, tf in sorted(flips, key=lambda r: (-r[0], r[1])):
        rows.append(f"| `{p!r}` | {n} | {ta} `{piece(ta)!r}` | {ma:.3f} | {tb} `{piece(tb)!r}` | {mb:.3f} | {tf} `{piece(tf)!r}` |")
    (work / "flips.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows[:27]) + f"\n(all {len(flips)} in {work / 'flips.md'})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["prepare", "train", "export", "check"])
    ap.add_argument("--work", type=Path, default=Path("/work/scratch/demo_model"))
    ap.add_argument("--out", type=Path, default=OUT_GGUF)
    ap.add_argument("--prompt", help="export: the demo prompt to record as qdbg.demo.prompt")
    ap.add_argument("--stop-after", type=int, default=0, help="train: stop at this step (schedule unchanged)")
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        cmd_prepare(a.work)
    elif a.cmd == "train":
        cmd_train(a.work, a.stop_after)
    elif a.cmd == "export":
        cmd_export(a.work, a.out, a.prompt)
    else:
        cmd_check(a.work, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
