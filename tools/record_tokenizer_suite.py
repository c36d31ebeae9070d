"""Record llama.cpp's own tokenizer test suite (tests/test-tokenizer-0) as compact golden data.

llama.cpp ships `models/ggml-vocab-<name>.gguf` with `.inp` (cases separated by
"\\n__ggml_vocab_test__\\n") and `.out` (one line of expected ids per case: no BOS, special tokens not
parsed). The vocab files are 44 MB together, too big to commit, so for every vocabulary qdbg
supports this writes tests/golden/tokenizer_suite/<name>.json.gz with

  * the cases: each input text and the ids of its `.out` line (llama.cpp's expected output);
  * the tokenizer metadata scalars (model, pre, special ids, flags, general.name/architecture);
  * n_vocab and a *sparse* vocabulary: every token whose text could be looked up while tokenizing
    these inputs, with its id, type and score. That is a superset independent of the merge
    algorithm: every non-NORMAL token (specials, byte tokens), every one-character token (byte
    fallback), every token or merge whose text occurs inside some input as BPE sees it (GPT-2
    byte stand-ins) or SentencePiece sees it (spaces as U+2581, with and without the prefix space),
    and every id a tokenizer.ggml.*_token_id key names;
  * the merges whose merged text occurs in some input, in their original order (ranks compare only).

tests/test_tokenizer_suite.py rebuilds full-length metadata (absent ids get unique placeholder
texts of type UNUSED that no input contains) and checks every case with exact ids. Before writing,
this script checks that qdbg gives the same ids on the sparse and on the full vocabulary, and that
llama-cpp-python (the installed oracle, tools only) gives the `.out` ids too.

Vocabularies qdbg does not support are listed in index.json with the reason; their test asserts
they still raise UnsupportedError, so adding support shows up as a test to record.

    python tools/record_tokenizer_suite.py [--models DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
OUT = ROOT / "tests" / "golden" / "tokenizer_suite"
MODELS = Path("/work/src/llama_cpp_python-0.3.36/vendor/llama.cpp/models")
SEP = "\n__ggml_vocab_test__\n"
ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def read_cases(gguf: Path) -> list[tuple[str, list[int]]]:
    """(text, expected ids) pairs exactly as test-tokenizer-0.cpp's read_tests parses them."""
    raw = Path(str(gguf) + ".inp").read_bytes().decode("utf-8")
    texts: list[str] = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    lines = Path(str(gguf) + ".out").read_text().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(texts):
        raise SystemExit(f"{gguf.name}: {len(texts)} inputs but {len(lines)} output lines")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


def _jsonable(v: object) -> object:
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    if isinstance(v, np.generic):
        return v.item()
    return v


def _search_text(texts: list[str], spm: bool) -> str:
    """All inputs as the merge engine sees them, joined by a separator no token contains."""
    from qdbg.tokenizer.bpe import byte_encode

    if spm:
        forms = [p for t in texts for p in (t.replace(" ", "\u2581"), "\u2581" + t.replace(" ", "\u2581"))]
    else:
        forms = [byte_encode(t) for t in texts]
    return "\x00\uffff\x00".join(forms)


def sparse_vocab(md: dict, texts: list[str]) -> tuple[list[list], list[str]]:
    """The kept [id, text, type, score] rows and merges (see module doc)."""
    from qdbg.tokenizer.vocab import string_list

    tokens = string_list(md, "tokenizer.ggml.tokens")
    n = len(tokens)
    types = np.asarray(md.get("tokenizer.ggml.token_type", np.ones(n)), dtype=np.int64)[:n]
    scores = np.asarray(md.get("tokenizer.ggml.scores", np.zeros(n)), dtype=np.float32)[:n]
    spm = md["tokenizer.ggml.model"] == "llama"
    hay = _search_text(texts, spm)
    assert all("\x00\uffff\x00" not in t for t in tokens)
    named = {int(v) for k, v in md.items() if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")}
    keep = [i for i, t in enumerate(tokens) if types[i] != 1 or len(t) <= 1 or i in named or t in hay]
    rows = [[i, tokens[i], int(types[i]), float(scores[i])] for i in keep]
    merges: list[str] = []
    if not spm:
        for m in string_list(md, "tokenizer.ggml.merges"):
            pos = m.find(" ", 1)
            if pos >= 0 and m[:pos] + m[pos + 1:] in hay:
                merges.append(m)
    return rows, merges


def record(name: str, models: Path, oracle: object | None) -> dict:
    from qdbg.errors import UnsupportedError
    from qdbg.tokenizer import Tokenizer
    from qdbg.tokenizer.metadata import read_metadata

    path = models / f"ggml-vocab-{name}.gguf"
    md = {k: _jsonable(v) if k not in ARRAYS else v for k, v in read_metadata(path).items()}
    cases = read_cases(path)
    scalars = {k: v for k, v in md.items() if k in ("general.name", "general.architecture")
               or (k.startswith("tokenizer.ggml.") and k not in ARRAYS)}
    entry = {"name": name, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
             "cases": len(cases), "model": md.get("tokenizer.ggml.model"), "pre": md.get("tokenizer.ggml.pre")}
    try:
        full = Tokenizer.from_gguf(md)
    except UnsupportedError as e:
        return {**entry, "status": "unsupported", "reason": str(e), "metadata": scalars}
    texts = [t for t, _ in cases]
    rows, merges = sparse_vocab(md, texts)
    data = {**entry, "status": "covered", "metadata": scalars, "llama_cpp_checked": oracle is not None,
            "n_vocab": full.n_vocab, "tokens": rows, "merges": merges,
            "cases": [[t, ids] for t, ids in cases]}
    sparse = Tokenizer.from_gguf(sparse_metadata(data))
    for text, ids in cases:
        got_full = full.encode(text, add_bos=False, parse_special=False)
        got_sparse = sparse.encode(text, add_bos=False, parse_special=False)
        if got_sparse != got_full:
            raise SystemExit(f"{name}: sparse vocabulary changes the result for {text!r}")
        if got_full != ids:
            print(f"  {name}: qdbg differs from .out on {text!r}: {got_full} vs {ids}")
        if oracle is not None:
            ref = oracle(path, text)
            if ref != ids:
                print(f"  {name}: llama-cpp-python differs from .out on {text!r}: {ref} vs {ids}")
                data.setdefault("llama_cpp_differs", []).append(text)
    return data


def sparse_metadata(data: dict) -> dict:
    """Full-length GGUF-style metadata from a recorded sparse vocabulary (shared with the test)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tokenizer_suite import sparse_metadata as build

    return build(data)


def make_oracle() -> object | None:
    try:
        import llama_cpp  # noqa: F401  (the oracle; tools only)
        from record_tokenizer_golden import LlamaVocab
    except ImportError:
        print("llama-cpp-python not importable: .out files are not cross-checked")
        return None
    cache: dict[Path, object] = {}

    def oracle(path: Path, text: str) -> list[int]:
        lv = cache.get(path)
        if lv is None:
            lv = cache[path] = LlamaVocab(path)
        return lv.tokenize(text, False, False)  # type: ignore[attr-defined]
    return oracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=MODELS, help="llama.cpp's models/ directory")
    ap.add_argument("--no-oracle", action="store_true", help="skip the llama-cpp-python cross-check")
    ap.add_argument("names", nargs="*", help="vocabulary names (default: every ggml-vocab-*.gguf with .inp/.out)")
    args = ap.parse_args()
    names = args.names or sorted(p.name[len("ggml-vocab-"):-len(".gguf.inp")]
                                 for p in args.models.glob("ggml-vocab-*.gguf.inp"))
    oracle = None if args.no_oracle else make_oracle()
    OUT.mkdir(parents=True, exist_ok=True)
    index_path = OUT / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name in names:
        data = record(name, args.models, oracle)
        if data["status"] == "covered":
            blob = json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode()
            (OUT / f"{name}.json.gz").write_bytes(gzip.compress(blob, 9, mtime=0))
            summary = {k: data[k] for k in ("file", "sha256", "status", "model", "pre", "n_vocab", "llama_cpp_checked")}
            summary["cases"] = len(data["cases"])
            summary["kept_tokens"], summary["kept_merges"] = len(data["tokens"]), len(data["merges"])
            if "llama_cpp_differs" in data:
                summary["llama_cpp_differs"] = data["llama_cpp_differs"]
        else:
            summary = {k: data[k] for k in ("file", "sha256", "status", "model", "pre", "cases", "reason", "metadata")}
        index[name] = summary
        print(f"{name}: {summary['status']}", {k: summary.get(k) for k in ("cases", "kept_tokens", "kept_merges")})
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=1, ensure_ascii=True) + "\n")


if __name__ == "__main__":
    main()
