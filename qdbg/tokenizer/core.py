"""The Tokenizer: text <-> token ids exactly as llama.cpp does it, from GGUF metadata alone.

encode = special-token partition (llama.cpp's tokenizer_st_partition) + per fragment SentencePiece
(with the add_space_prefix rule) or pre-tokenize + byte-level BPE, + BOS/EOS as the file asks.
piece_bytes / decode follow llama_token_to_piece / llama_detokenize (including clean_spaces).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from qdbg.errors import GGUFError, QdbgError, UsageError
from qdbg.tokenizer.bpe import BPE, CHAR_TO_BYTE, byte_encode
from qdbg.tokenizer.spm import SPM
from qdbg.tokenizer.vocab import (ATTR_BYTE, ATTR_CONTROL, ATTR_LSTRIP, ATTR_NORMAL, ATTR_RSTRIP, ATTR_UNKNOWN,
                                  ATTR_USER_DEFINED, Vocab, string_list)

__all__ = ["Tokenizer"]

_C_SPACE = " \t\n\x0b\x0c\r"  # C isspace()
_SPECIAL = ATTR_CONTROL | ATTR_UNKNOWN


class Tokenizer:
    """llama.cpp-exact tokenizer for one GGUF file's vocabulary.

    Build with `Tokenizer.from_gguf(metadata)` (a dict-like of GGUF keys; string arrays may be lists of
    str/bytes or lazy sequences with `get_bytes(i)`) or `Tokenizer.from_path(path)` (cached per file).

    Attributes: `n_vocab`, `bos_id`, `eos_id`, `eot_id`, `unk_id`, `pad_id` (None when absent),
    `eog_ids` (ids that end generation), `add_bos`, `add_eos`, `model` ('llama' | 'gpt2'),
    `pre` (tokenizer.ggml.pre or None), `chat_template` (str or None).
    """

    def __init__(self, vocab: Vocab, merges: Sequence[str] | None, chat_template: str | None) -> None:
        self.vocab = vocab
        sp = vocab.special
        self.n_vocab = vocab.n_tokens
        self.bos_id, self.eos_id, self.eot_id = sp["bos"], sp["eos"], sp["eot"]
        self.unk_id, self.pad_id = sp["unk"], sp["pad"]
        self.eog_ids = vocab.eog_ids
        self.add_bos, self.add_eos = vocab.add_bos, vocab.add_eos
        self.model, self.pre = vocab.model, vocab.pre
        self.chat_template = chat_template
        self._spm = SPM(vocab.to_id, vocab.scores, sp["unk"]) if vocab.type == "spm" else None
        self._bpe = BPE(vocab.to_id, merges or (), vocab.pre_tokenizer.ignore_merges) if vocab.type == "bpe" else None
        self._pieces: dict[tuple[int, bool], bytes] = {}

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Tokenizer for the vocabulary described by `metadata` (GGUF key -> value)."""
        try:
            vocab = Vocab(metadata)
            merges = string_list(metadata, "tokenizer.ggml.merges") if vocab.type == "bpe" else None
        except QdbgError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, OverflowError, UnicodeError) as e:
            raise GGUFError(f"malformed tokenizer metadata ({type(e).__name__}: {e})") from e
        tmpl = metadata.get("tokenizer.chat_template")
        if isinstance(tmpl, bytes):
            tmpl = tmpl.decode("utf-8", "replace")
        return cls(vocab, merges, tmpl if isinstance(tmpl, str) else None)

    _cache: dict[tuple[str, int, int], Tokenizer] = {}

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Tokenizer of a GGUF file, cached per (path, size, mtime) so repeated opens cost nothing."""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError as e:
            raise GGUFError(f"{path}: cannot open: {e.strerror or e}") from None
        key = (real, st.st_size, st.st_mtime_ns)
        tok = cls._cache.get(key)
        if tok is None:
            tok = cls.from_gguf(_read_metadata(real))
            if len(cls._cache) >= 8:
                cls._cache.pop(next(iter(cls._cache)))
            cls._cache[key] = tok
        return tok

    # ---- encode -------------------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of `text`, identical to llama_tokenize(text, add_special, parse_special).

        add_bos: None adds BOS/EOS as the file asks (llama.cpp's add_special=True); False adds neither
        (add_special=False); True adds BOS even if the file does not ask for it.
        parse_special: special/control token texts written in `text` become single tokens; when False
        only user-defined tokens do and control tokens are tokenized as plain text.
        """
        if not isinstance(text, str):
            raise UsageError(f"encode() takes a str, not {type(text).__name__}")
        v = self.vocab
        add_special = add_bos is not False
        want_bos = add_special and (v.add_bos or add_bos is True)
        want_eos = add_special and v.add_eos
        out: list[int] = []
        if want_bos:
            if self.bos_id is None:
                raise UsageError("cannot add BOS: the vocabulary has no BOS token")
            out.append(self.bos_id)
        frags = self._partition(text, parse_special) if text else []
        if self._spm is not None:
            prev_special = True  # prefix with a space if first, or after a special token
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    prev_special = True
                    continue
                if v.add_space_prefix and prev_special:
                    f = " " + f
                self._spm.encode(f.replace(" ", "\u2581"), out)
                prev_special = False
        else:
            assert self._bpe is not None and v.pre_tokenizer is not None
            split, enc = v.pre_tokenizer.split, self._bpe.encode_word
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                else:
                    for w in split(f):
                        out.extend(enc(byte_encode(w)))
        if want_eos:
            out.append(self.eos_id)  # type: ignore[arg-type]  # checked at load
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split `text` at special-token texts (longest tokens first) into str fragments and token ids."""
        v = self.vocab
        frags: list[str | int] = [text]
        for sid in v.special_ids:
            attr = int(v.attrs[sid])
            if not parse_special and attr & _SPECIAL:
                continue
            tok = v.texts[sid]
            if tok not in text:
                continue
            new: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or tok not in f:
                    new.append(f)
                    continue
                pos, n = 0, len(f)
                while True:
                    m = f.find(tok, pos)
                    if m < 0:
                        if pos < n:
                            new.append(f[pos:])
                        break
                    left = f[pos:m]
                    if attr & ATTR_LSTRIP:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        new.append(left)
                    new.append(sid)
                    pos = m + len(tok)
                    if attr & ATTR_RSTRIP:
                        while pos < n and f[pos] in _C_SPACE:
                            pos += 1
                    if pos >= n:
                        break
            frags = new
        return frags

    # ---- decode -------------------------------------------------------------------------------
    def _check(self, tid: int) -> int:
        try:
            i = int(tid)
        except (TypeError, ValueError):
            raise UsageError(f"token id {tid!r} is not an integer") from None
        if not 0 <= i < self.n_vocab:
            raise UsageError(f"token id {i} is out of range (vocabulary has {self.n_vocab} tokens)")
        return i

    def token_text(self, tid: int) -> str:
        """The raw vocabulary entry of a token (GPT-2 stand-in characters / U+2581 as stored)."""
        return self.vocab.texts[self._check(tid)]

    def piece_bytes(self, tid: int, special: bool = True) -> bytes:
        """Bytes of one token as llama_token_to_piece(token, lstrip=0, special) gives them.

        special=False renders control and unknown tokens as nothing.
        """
        i = self._check(tid)
        key = (i, special)
        hit = self._pieces.get(key)
        if hit is None:
            hit = self._pieces[key] = self._piece(i, special)
        return hit

    def _piece(self, i: int, special: bool) -> bytes:
        attr = int(self.vocab.attrs[i])
        if not special and attr & _SPECIAL:
            return b""
        text = self.vocab.texts[i]
        if attr & (_SPECIAL | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if attr & ATTR_NORMAL:
            if self._spm is not None:
                return text.replace("\u2581", " ").encode("utf-8", "surrogateescape")
            return _gpt2_decode(text)
        if attr & ATTR_BYTE:
            return bytes([_hex_byte(text[3:5])])
        return b""

    def piece(self, tid: int) -> str:
        """One token as display text: its bytes decoded as UTF-8, stray bytes shown as \\xNN."""
        return self.piece_bytes(tid).decode("utf-8", "backslashreplace")

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """`piece` of each id."""
        return [self.piece(t) for t in ids]

    def decode_bytes(self, ids: Sequence[int], *, remove_special: bool = False, unparse_special: bool = True) -> bytes:
        """Bytes of llama_detokenize(ids, remove_special, unparse_special)."""
        v = self.vocab
        ids = [self._check(t) for t in ids]
        remove_space = v.add_space_prefix
        if remove_special and v.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and v.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        buf = bytearray()
        for t in ids:
            p = self.piece_bytes(t, unparse_special)
            if remove_space and p[:1] == b" ":
                p = p[1:]
            remove_space = False
            buf += p
        return _clean_spaces(buf) if v.clean_spaces else bytes(buf)

    def decode(self, ids: Sequence[int], *, remove_special: bool = False, unparse_special: bool = True) -> str:
        """Text of `ids` as llama_detokenize gives it (invalid UTF-8 replaced by U+FFFD)."""
        return self.decode_bytes(ids, remove_special=remove_special,
                                 unparse_special=unparse_special).decode("utf-8", "replace")

    def is_special(self, tid: int) -> bool:
        """True for control, unknown and user-defined tokens (the ones matched as specials in text)."""
        return bool(int(self.vocab.attrs[self._check(tid)]) & (_SPECIAL | ATTR_USER_DEFINED))

    # ---- chat ---------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    system: str | None = None, template: str | None = None) -> str:
        """Render the file's `tokenizer.chat_template` (or `template`) in a jinja2 sandbox.

        Variables as llama.cpp / transformers pass them: messages, add_generation_prompt, bos_token,
        eos_token. `system`, if given, is prepended as a system message. Raises TemplateError.
        """
        from qdbg.tokenizer.chat import render_chat

        tmpl = template if template is not None else self.chat_template
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]

        def tok(i: int | None) -> str:
            return self.vocab.texts[i] if i is not None else ""

        return render_chat(tmpl, messages, add_generation_prompt=add_generation_prompt,
                           bos_token=tok(self.bos_id), eos_token=tok(self.eos_id))

    def __repr__(self) -> str:
        return f"Tokenizer(model={self.model!r}, pre={self.pre!r}, n_vocab={self.n_vocab})"


def _hex_byte(s: str) -> int:
    """strtol(s, 16) over at most two characters, as llama.cpp reads <0xNN>."""
    val = 0
    for c in s:
        d = int(c, 16) if c in "0123456789abcdefABCDEF" else -1
        if d < 0:
            break
        val = val * 16 + d
    return val & 0xFF


def _gpt2_decode(text: str) -> bytes:
    """GPT-2 stand-in characters -> bytes (llama_decode_text, including its [UNK_BYTE_..] marker)."""
    out = bytearray()
    for c in text:
        b = CHAR_TO_BYTE.get(c)
        if b is not None:
            out.append(b)
            continue
        utf8 = "\ufffd".encode() if 0xDC80 <= ord(c) <= 0xDCFF else c.encode("utf-8", "surrogatepass")
        out += b"[UNK_BYTE_0x" + utf8.hex().encode() + text.encode("utf-8", "surrogateescape") + b"]"
    return bytes(out)


def _clean_spaces(t: bytearray) -> bytes:
    """llama_detokenize's clean_spaces passes, done in place on the bytes like the C code."""
    sp, ap = 0x20, 0x27
    total1 = len(t)  # pass 1: " ?", " !", " .", " ," lose the space
    total = 1 if total1 else 0
    for i in range(1, total1):
        x = t[i]
        if t[i - 1] == sp and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    total2 = total  # pass 2: " ' " loses both spaces
    total = 1 if total2 else 0
    i = 1
    while i < total2:
        x = t[i]
        if x == ap and i + 1 < total2 and t[i - 1] == sp and t[i + 1] == sp:
            total -= 1
            i += 1
            t[i] = 0
        t[total] = x
        total += 1
        i += 1
    total3 = total  # pass 3: " 's", " 'm", " 're", " 've" lose the space
    total = 1 if total3 else 0
    for i in range(1, total3):
        x = t[i]
        if t[i - 1] == sp and x == ap and i + 1 < total3:
            x1 = t[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 not in b"td" and i + 2 < total3 and (x1, t[i + 2]) in ((0x72, 0x65), (0x76, 0x65)):
                total -= 1
        t[total] = x
        total += 1
    return bytes(t[:total])


def _read_metadata(path: str) -> Mapping[str, Any]:
    from qdbg.tokenizer.metadata import read_metadata
    return read_metadata(path)
