"""SentencePiece (tokenizer.ggml.model = llama), as llama.cpp's llm_tokenizer_spm_session does it.

The fragment (spaces already escaped to U+2581) starts as single characters; repeatedly the adjacent
pair whose concatenation is a vocabulary piece with the highest score is merged (leftmost first on
ties). A final symbol that is not a piece becomes one `<0xNN>` byte token per UTF-8 byte (or the raw
one-byte piece, if the vocabulary has no byte tokens).
"""

from __future__ import annotations

import heapq

import numpy as np

from qdbg.errors import UnsupportedError

__all__ = ["SPM"]


class SPM:
    """Score-driven merge engine over one vocabulary."""

    def __init__(self, to_id: dict[str, int], scores: np.ndarray, unk_id: int | None) -> None:
        self.to_id = to_id
        self.scores = scores.astype(np.float64).tolist()  # float32 values, exactly
        self.unk_id = unk_id
        self._byte_ids: list[int | None] = [self._byte_token(b) for b in range(256)]

    def _byte_token(self, b: int) -> int | None:
        tid = self.to_id.get(f"<0x{b:02X}>")
        if tid is None:
            tid = self.to_id.get(chr(b) if b < 128 else chr(0xDC00 + b))
        return tid

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` (already space-escaped) to `out`."""
        syms = list(text)
        n = len(syms)
        if n == 0:
            return
        to_id, scores = self.to_id, self.scores
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int]] = []  # (-score, left, right, merged length)
        for i in range(n - 1):
            t = to_id.get(syms[i] + syms[i + 1])
            if t is not None:
                heap.append((-scores[t], i, i + 1, 2))
        heapq.heapify(heap)
        lens = [1] * n
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if lens[left] == 0 or lens[right] == 0 or lens[left] + lens[right] != size:
                continue  # stale
            syms[left] += syms[right]
            lens[left] += lens[right]
            lens[right] = 0
            syms[right] = ""
            nxt[left] = nxt[right]
            if nxt[left] >= 0:
                prv[nxt[left]] = left
            for a, b in ((prv[left], left), (left, nxt[left])):
                if a >= 0 and b >= 0:
                    t = to_id.get(syms[a] + syms[b])
                    if t is not None:
                        heapq.heappush(heap, (-scores[t], a, b, lens[a] + lens[b]))
        i = 0
        while i != -1:
            s = syms[i]
            t = to_id.get(s)
            if t is not None:
                out.append(t)
            else:
                for byte in s.encode("utf-8", "surrogatepass"):
                    bt = self._byte_ids[byte]
                    if bt is None:
                        if self.unk_id is None:
                            raise UnsupportedError(f"SentencePiece vocabulary has no token for byte 0x{byte:02X}")
                        bt = self.unk_id
                    out.append(bt)
            i = nxt[i]
