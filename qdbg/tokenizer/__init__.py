"""Tokenizer: turn text into exactly the token ids llama.cpp produces, using only GGUF metadata.

Supports tokenizer.ggml.model 'llama' (SentencePiece with scores and byte fallback) and 'gpt2'
(byte-level BPE with the pre-tokenizers listed in qdbg.tokenizer.pretokenize), llama.cpp's
special-token parsing, detokenization to pieces/text, and chat-template rendering in a jinja2 sandbox.

    tok = Tokenizer.from_path("model.gguf")           # or Tokenizer.from_gguf(metadata_mapping)
    ids = tok.encode("Hello", add_bos=None, parse_special=True)
    tok.pieces(ids); tok.decode(ids)
    prompt = tok.render_chat([{"role": "user", "content": "Hi"}])

`tokenize(path, text, ...)` is the one-call entry point for the CLI.
"""

from __future__ import annotations

import os

from qdbg.tokenizer.core import Tokenizer

__all__ = ["Tokenizer", "tokenize"]


def tokenize(path: str | os.PathLike[str], text: str, *, add_bos: bool | None = None,
             parse_special: bool = True, chat: bool = False, system: str | None = None) -> list[tuple[int, str]]:
    """(id, piece) pairs for `text` tokenized with the vocabulary of the GGUF file at `path`.

    chat=True first renders `text` as one user message through the file's chat template (with an
    optional `system` message); the rendered prompt then carries its own BOS if the template writes one.
    """
    tok = Tokenizer.from_path(path)
    if chat:
        text = tok.render_chat([{"role": "user", "content": text}], add_generation_prompt=True, system=system)
    ids = tok.encode(text, add_bos=add_bos, parse_special=parse_special)
    return [(i, tok.piece(i)) for i in ids]
