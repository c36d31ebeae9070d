"""Golden data of llama.cpp's tokenizer test suite (tests/golden/tokenizer_suite, written by
tools/record_tokenizer_suite.py): the index, each covered vocabulary, and the full-length metadata
a sparse vocabulary stands for."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SUITE = Path(__file__).parent / "golden" / "tokenizer_suite"
TYPE_UNUSED = 5


@lru_cache(maxsize=None)
def suite_index() -> dict[str, dict[str, Any]]:
    """Vocabulary name -> summary (status 'covered' or 'unsupported', case count, ...)."""
    return json.loads((SUITE / "index.json").read_text())


@lru_cache(maxsize=None)
def suite_data(name: str) -> dict[str, Any]:
    """The recorded data of one covered vocabulary (cases, metadata scalars, sparse tokens, merges)."""
    return json.loads(gzip.decompress((SUITE / f"{name}.json.gz").read_bytes()))


def sparse_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """GGUF-style metadata with full-length token arrays: recorded tokens at their ids, every other id
    a placeholder text no test input contains, of type UNUSED and score 0."""
    n = data["n_vocab"]
    texts = [f"\x00absent {i}\x00" for i in range(n)]
    types = [TYPE_UNUSED] * n
    scores = [0.0] * n
    for i, text, typ, score in data["tokens"]:
        texts[i], types[i], scores[i] = text, typ, score
    md = dict(data["metadata"])
    md["tokenizer.ggml.tokens"] = texts
    md["tokenizer.ggml.token_type"] = types
    md["tokenizer.ggml.scores"] = scores
    if md.get("tokenizer.ggml.model") == "gpt2":
        md["tokenizer.ggml.merges"] = data["merges"]
    return md
