"""Unicode character classes exactly as llama.cpp's tokenizer sees them.

llama.cpp classifies code points with its own table (generated from a newer UnicodeData.txt than most
Pythons ship), not with the C library or Python's `unicodedata`. `_unicode_table.py` is a copy of that
table, read out of libllama by `tools/record_tokenizer_golden.py unicode` (range starts + flags), so
qdbg splits text the same way whatever Python version runs it.

The pre-tokenizer regexes run on a *collapsed* text, like llama.cpp's `unicode_regex_split`: every
code point below 128 stays itself, every other one becomes one stand-in character for its class
(whitespace -> \\x0b, \\p{N} -> \\xd1, \\p{L} -> \\xd2, \\p{P} -> \\xd3, \\p{M} -> \\xd4, \\p{S} -> \\xd5,
anything else -> \\xd0). The collapsed text has one character per code point, so match offsets in it
are offsets in the original string.
"""

from __future__ import annotations

import base64

import numpy as np

from qdbg.tokenizer._unicode_table import FLAGS_B64, STARTS_B64

__all__ = ["FLAG_NUMBER", "FLAG_LETTER", "FLAG_WHITESPACE", "collapse", "codepoints", "flags_of", "wide_text"]

# llama.cpp unicode_cpt_flags bits
FLAG_UNDEFINED = 0x0001
FLAG_NUMBER = 0x0002
FLAG_LETTER = 0x0004
FLAG_SEPARATOR = 0x0008
FLAG_ACCENT_MARK = 0x0010
FLAG_PUNCTUATION = 0x0020
FLAG_SYMBOL = 0x0040
FLAG_CONTROL = 0x0080
FLAG_WHITESPACE = 0x0100

_STARTS = np.frombuffer(base64.b64decode(STARTS_B64), dtype="<u4").astype(np.uint32)
_FLAGS = np.frombuffer(base64.b64decode(FLAGS_B64), dtype="<u2").astype(np.uint16)

_CATEGORY_CHAR = {FLAG_NUMBER: 0xD1, FLAG_LETTER: 0xD2, FLAG_PUNCTUATION: 0xD3,
                  FLAG_ACCENT_MARK: 0xD4, FLAG_SYMBOL: 0xD5}


def _collapse_codes(flags: np.ndarray) -> np.ndarray:
    """Stand-in byte for each table range (used for code points >= 128)."""
    out = np.full(flags.shape, 0xD0, dtype=np.uint8)
    cat = flags & 0xFF
    for flag, ch in _CATEGORY_CHAR.items():
        out[cat == flag] = ch
    out[(flags & FLAG_WHITESPACE) != 0] = 0x0B
    return out


_CODES = _collapse_codes(_FLAGS)
_WIDE_WS = (_FLAGS & FLAG_WHITESPACE) != 0


def codepoints(text: str) -> np.ndarray:
    """Code points of `text` as uint32 (lone surrogates kept, as llama.cpp decodes their UTF-8)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _range_index(cps: np.ndarray) -> np.ndarray:
    # [n] code points -> [n] index of the table range holding each
    return np.searchsorted(_STARTS, cps, side="right") - 1


def flags_of(text: str) -> np.ndarray:
    """llama.cpp's flags (category bits | whitespace bit) for each code point of `text`."""
    return _FLAGS[_range_index(codepoints(text))]


def collapse(text: str) -> str:
    """The collapsed form of `text` that llama.cpp runs \\p{..} regexes on (see module doc)."""
    if text.isascii():
        return text
    cps = codepoints(text)
    out = np.where(cps < 128, cps, _CODES[_range_index(cps)]).astype(np.uint8)
    return out.tobytes().decode("latin-1")


def wide_text(text: str) -> str:
    """The text llama.cpp runs regexes without \\p{..} on: non-ASCII whitespace becomes \\x0b."""
    if text.isascii():
        return text
    cps = codepoints(text)
    ws = (cps >= 128) & _WIDE_WS[_range_index(cps)]
    if not ws.any():
        return text
    out = np.where(ws, 0x0B, cps).astype("<u4")
    return out.tobytes().decode("utf-32-le", "surrogatepass")
