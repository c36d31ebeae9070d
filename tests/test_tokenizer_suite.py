"""qdbg's tokenizer on llama.cpp's own tokenizer test suite (tests/test-tokenizer-0 in llama.cpp).

llama.cpp ships `models/ggml-vocab-<name>.gguf` with `.inp` cases and `.out` expected ids (no BOS,
special tokens not parsed). tools/record_tokenizer_suite.py stored every case with its `.out` ids
and the part of each vocabulary those inputs can reach (tests/golden/tokenizer_suite, see
tests/tokenizer_suite.py); llama-cpp-python 0.3.36 agreed with every `.out` line when recorded.
Every case of every vocabulary qdbg supports must give exactly those ids; the vocabularies it does
not support must still be refused with an UnsupportedError (so supporting one means recording it).
"""

from __future__ import annotations

from functools import lru_cache

import pytest

from qdbg.errors import UnsupportedError
from qdbg.tokenizer import Tokenizer
from tokenizer_suite import sparse_metadata, suite_data, suite_index

COVERED = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-bpe", "llama-spm", "mpt", "phi-3",
           "qwen2", "qwen35", "refact", "starcoder"]
UNSUPPORTED = ["bert-bge", "gemma-4"]


@lru_cache(maxsize=None)
def suite_tokenizer(name: str) -> Tokenizer:
    return Tokenizer.from_gguf(sparse_metadata(suite_data(name)))


def test_index_lists_the_whole_suite() -> None:
    idx = suite_index()
    assert sorted(n for n, e in idx.items() if e["status"] == "covered") == COVERED
    assert sorted(n for n, e in idx.items() if e["status"] == "unsupported") == UNSUPPORTED
    for name in COVERED:
        assert idx[name]["llama_cpp_checked"] is True, f"{name}: .out not cross-checked against llama.cpp"


@pytest.mark.parametrize("name", COVERED)
def test_llama_cpp_suite_cases(name: str) -> None:
    """Every case of llama.cpp's test-tokenizer-0 for this vocabulary, exact ids."""
    data, tok = suite_data(name), suite_tokenizer(name)
    assert (tok.model, tok.pre, tok.n_vocab) == (data["model"], data["pre"], data["n_vocab"])
    cases = data["cases"]
    assert len(cases) == suite_index()[name]["cases"] >= 46
    bad = []
    for text, ids in cases:
        got = tok.encode(text, add_bos=False, parse_special=False)
        if got != ids:
            bad.append(f"{text[:60]!r}: qdbg {got[:24]} llama.cpp {ids[:24]}")
    assert not bad, f"{name}: {len(bad)} of {len(cases)} cases differ:\n" + "\n".join(bad[:8])


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_suite_vocabularies_are_refused(name: str) -> None:
    entry = suite_index()[name]
    what = entry["pre"] if entry["model"] == "gpt2" else entry["model"]
    with pytest.raises(UnsupportedError, match=f"'{what}'"):
        Tokenizer.from_gguf(entry["metadata"])


@pytest.mark.parametrize("name", ["gpt-2", "llama-spm"])
def test_suite_depends_on_the_recorded_vocabulary(name: str) -> None:
    """Control: without its merges (BPE) or multi-character pieces (SPM) the vocabulary fails the suite."""
    data = dict(suite_data(name))
    if data["model"] == "gpt2":
        data["merges"] = []
    else:
        data["tokens"] = [row for row in data["tokens"] if len(row[1]) <= 1 or row[2] != 1]
    tok = Tokenizer.from_gguf(sparse_metadata(data))
    wrong = sum(tok.encode(text, add_bos=False, parse_special=False) != ids for text, ids in data["cases"])
    assert wrong >= len(data["cases"]) // 2
