"""Byte-level BPE (tokenizer.ggml.model = gpt2), as llama.cpp's llm_tokenizer_bpe_session does it.

Each pre-tokenized word is UTF-8 encoded and mapped byte by byte onto GPT-2's printable stand-in
characters; starting from single characters, the adjacent pair with the lowest merge rank is merged
(leftmost first on ties) until no pair has a rank. A final symbol that is not in the vocabulary falls
back to one token per byte of its (stand-in) UTF-8 text, bytes with no token being dropped, exactly as
llama.cpp does.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

__all__ = ["BYTE_TO_CHAR", "CHAR_TO_BYTE", "BPE", "byte_encode"]


def _byte_map() -> list[str]:
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out: dict[int, str] = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return [out[b] for b in range(256)]


BYTE_TO_CHAR = _byte_map()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
_LATIN1_TO_GPT2 = {b: c for b, c in enumerate(BYTE_TO_CHAR)}  # str.translate table over latin-1 text


def byte_encode(word: str) -> str:
    """UTF-8 bytes of `word` (surrogates passed through) as GPT-2 stand-in characters."""
    return word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_GPT2)


def _byte_key(b: int) -> str:
    # a one-byte token text as the vocabulary stores it (invalid UTF-8 kept as a surrogate escape)
    return chr(b) if b < 128 else chr(0xDC00 + b)


class BPE:
    """Merge engine over one vocabulary; merge ranks are parsed once, on first use."""

    def __init__(self, to_id: dict[str, int], merges: Sequence[str], ignore_merges: bool) -> None:
        self.to_id = to_id
        self._merges = merges
        self._ranks: dict[tuple[str, str], int] | None = None
        self.ignore_merges = ignore_merges
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def ranks(self) -> dict[tuple[str, str], int]:
        if self._ranks is None:
            ranks: dict[tuple[str, str], int] = {}
            for i, m in enumerate(self._merges):
                pos = m.find(" ", 1)
                pair = (m[:pos], m[pos + 1:]) if pos >= 0 else ("", "")
                ranks.setdefault(pair, i)  # first rank wins on duplicates
            self._ranks = ranks
            self._merges = ()
        return self._ranks

    def encode_word(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-tokenized word given in GPT-2 stand-in characters."""
        hit = self._cache.get(word)
        if hit is None:
            hit = self._encode(word)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[word] = hit
        return hit

    def _encode(self, word: str) -> tuple[int, ...]:
        to_id = self.to_id
        if self.ignore_merges and word in to_id:
            return (to_id[word],)
        syms = list(word)
        if len(syms) > 1:
            syms = self._merge(syms)
        out: list[int] = []
        for s in syms:
            tid = to_id.get(s)
            if tid is not None:
                out.append(tid)
                continue
            for b in s.encode("utf-8", "surrogateescape"):
                tid = to_id.get(_byte_key(b))
                if tid is not None:
                    out.append(tid)
        return tuple(out)

    def _merge(self, syms: list[str]) -> list[str]:
        ranks = self.ranks
        n = len(syms)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[int, int, int, str]] = []  # (rank, left, right, merged text)
        for i in range(n - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None:
                heap.append((r, i, i + 1, syms[i] + syms[i + 1]))
        heapq.heapify(heap)
        while heap:
            _, left, right, text = heapq.heappop(heap)
            ls, rs = syms[left], syms[right]
            if not ls or not rs or ls + rs != text:
                continue  # stale: one side already merged away
            syms[left], syms[right] = text, ""
            nxt[left] = nxt[right]
            if nxt[left] >= 0:
                prv[nxt[left]] = left
            p, q = prv[left], nxt[left]
            if p >= 0:
                r = ranks.get((syms[p], text))
                if r is not None:
                    heapq.heappush(heap, (r, p, left, syms[p] + text))
            if q >= 0:
                r = ranks.get((text, syms[q]))
                if r is not None:
                    heapq.heappush(heap, (r, left, q, text + syms[q]))
        return [s for s in syms if s]
