"""The vocabulary as llama.cpp loads it from GGUF metadata: token texts, scores, attributes, special ids.

Follows llama_vocab::impl::load: per-model defaults for the special ids and BOS/EOS flags, the
`tokenizer.ggml.*` overrides, and the text-based fix-ups (end-of-generation and FIM tokens that are
marked CONTROL by their text, gpt-oss's USER_DEFINED tokens, phi-3's RSTRIP) that decide which tokens
are matched as specials in raw text and how they detokenize.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from qdbg.errors import GGUFError, UnsupportedError

__all__ = ["Vocab", "ATTR_UNKNOWN", "ATTR_UNUSED", "ATTR_NORMAL", "ATTR_CONTROL", "ATTR_USER_DEFINED",
           "ATTR_BYTE", "ATTR_LSTRIP", "ATTR_RSTRIP"]

# llama_token_attr bits
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
# tokenizer.ggml.token_type value -> attribute (0 = undefined, anything unknown too)
_TYPE_ATTR = {1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED, 5: ATTR_UNUSED, 6: ATTR_BYTE}

_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOG_TEXTS = frozenset(_EOT_TEXTS + ("<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "</s>", "<|eom_id|>", "[EOS]",
                                     "<eos>", "<turn|>", "<|tool_response>", "[e~["))
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_SPECIAL_KEYS = {  # our name -> tokenizer.ggml key(s); later keys override earlier ones, as in llama.cpp
    "bos": ("bos_token_id",), "eos": ("eos_token_id",), "eot": ("eot_token_id",), "eom": ("eom_token_id",),
    "unk": ("unknown_token_id",), "sep": ("seperator_token_id",), "pad": ("padding_token_id",),
    "mask": ("mask_token_id",),
    "fim_pre": ("fim_pre_token_id", "prefix_token_id"), "fim_suf": ("fim_suf_token_id", "suffix_token_id"),
    "fim_mid": ("fim_mid_token_id", "middle_token_id"), "fim_pad": ("fim_pad_token_id",),
    "fim_rep": ("fim_rep_token_id",), "fim_sep": ("fim_sep_token_id",),
}


def _text(v: Any, key: str) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    if isinstance(v, str):
        return v
    raise GGUFError(f"metadata {key}: expected a string, got {type(v).__name__}")


def string_list(md: Mapping[str, Any], key: str) -> list[str]:
    """A string array as exact text (invalid UTF-8 kept as surrogate escapes), lazy arrays included."""
    arr = md[key]
    if isinstance(arr, (str, bytes)) or not hasattr(arr, "__len__"):
        raise GGUFError(f"metadata {key}: expected an array of strings, got {type(arr).__name__}")
    get_bytes = getattr(arr, "get_bytes", None)
    if get_bytes is not None:
        return [get_bytes(i).decode("utf-8", "surrogateescape") for i in range(len(arr))]
    return [_text(v, key) for v in arr]


def _num_array(md: Mapping[str, Any], key: str, n: int, dtype: type) -> np.ndarray | None:
    if key not in md:
        return None
    try:
        arr = np.asarray(md[key], dtype=dtype)
    except (TypeError, ValueError):
        raise GGUFError(f"metadata {key}: expected a numeric array") from None
    if arr.ndim != 1 or len(arr) < n:
        raise GGUFError(f"metadata {key}: has {arr.size} entries for {n} tokens")
    return arr[:n]


class Vocab:
    """Token table plus llama.cpp's derived settings; built by `Vocab(metadata)`."""

    def __init__(self, md: Mapping[str, Any]) -> None:
        model = md.get("tokenizer.ggml.model")
        if model is None:
            raise GGUFError("metadata has no tokenizer.ggml.model")
        self.model = _text(model, "tokenizer.ggml.model")
        pre = md.get("tokenizer.ggml.pre")
        self.pre = _text(pre, "tokenizer.ggml.pre") if pre is not None else None
        special: dict[str, int | None] = {k: None for k in _SPECIAL_KEYS}
        if self.model == "llama":
            self.type = "spm"
            special.update(bos=1, eos=2, unk=0)
            self.add_space_prefix, self.clean_spaces, self.add_bos, self.add_eos = True, False, True, False
        elif self.model == "gpt2":
            self.type = "bpe"
            special.update(bos=11, eos=11)
            self.add_space_prefix, self.clean_spaces, self.add_bos, self.add_eos = False, True, False, False
            if "tokenizer.ggml.merges" not in md:
                raise GGUFError("gpt2 tokenizer without tokenizer.ggml.merges")
        else:
            raise UnsupportedError(f"tokenizer.ggml.model = {self.model!r} is not supported (qdbg handles 'llama' "
                                   "SentencePiece and 'gpt2' byte-level BPE)")
        self.pre_tokenizer = None
        if self.type == "bpe":
            from qdbg.tokenizer.pretokenize import pre_tokenizer
            self.pre_tokenizer = pt = pre_tokenizer(self.pre)
            self.clean_spaces, self.add_bos = pt.clean_spaces, pt.add_bos
            if pt.bos_null:
                special["bos"] = None
        if "tokenizer.ggml.add_space_prefix" in md:
            self.add_space_prefix = bool(md["tokenizer.ggml.add_space_prefix"])

        if "tokenizer.ggml.tokens" not in md:
            raise GGUFError("metadata has no tokenizer.ggml.tokens")
        texts = string_list(md, "tokenizer.ggml.tokens")
        n = len(texts)
        scores = _num_array(md, "tokenizer.ggml.scores", n, np.float32)
        types = _num_array(md, "tokenizer.ggml.token_type", n, np.int64)
        self.texts = texts
        self.scores = scores if scores is not None else np.zeros(n, np.float32)
        self.to_id: dict[str, int] = {}
        for i, t in enumerate(texts):
            if not t:
                texts[i] = t = f"[EMPTY_{i}]"
            if self.to_id.setdefault(t, i) != i:
                raise GGUFError(f"duplicate token in vocabulary: {t!r} has ids {self.to_id[t]} and {i}")
        if types is None:
            attrs = np.full(n, ATTR_NORMAL, np.int32)
        else:
            attrs = np.zeros(n, np.int32)
            for tt, a in _TYPE_ATTR.items():
                attrs[types == tt] = a
        self.attrs = attrs
        self._load_specials(md, special)
        self._fixups(md)
        # special tokens matched in raw text, longest first
        ids = np.flatnonzero(attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
        self.special_ids = sorted(ids.tolist(), key=lambda i: -len(texts[i].encode("utf-8", "surrogateescape")))

    @property
    def n_tokens(self) -> int:
        return len(self.texts)

    def _load_specials(self, md: Mapping[str, Any], special: dict[str, int | None]) -> None:
        n = self.n_tokens
        for name, keys in _SPECIAL_KEYS.items():
            if special[name] is not None and special[name] >= n:
                special[name] = None  # default out of range: disabled
            for key in keys:
                v = md.get("tokenizer.ggml." + key)
                if v is None:
                    continue
                try:
                    v = int(v)
                except (TypeError, ValueError):
                    raise GGUFError(f"metadata tokenizer.ggml.{key}: expected an integer, got {v!r}") from None
                if 0 <= v < n:  # an out-of-range id keeps the default, as llama.cpp does
                    special[name] = v
        for name, key in (("add_bos", "add_bos_token"), ("add_eos", "add_eos_token")):
            if "tokenizer.ggml." + key in md:
                setattr(self, name, bool(md["tokenizer.ggml." + key]))
        self.special = special
        if self.add_bos and special["bos"] is None:
            raise GGUFError("tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set")
        if self.add_eos and special["eos"] is None:
            raise GGUFError("tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set")

    def _mark_control(self, i: int) -> None:
        self.attrs[i] |= ATTR_CONTROL

    def _fixups(self, md: Mapping[str, Any]) -> None:
        sp, to_id, attrs = self.special, self.to_id, self.attrs
        if sp["eot"] is None:
            for t in _EOT_TEXTS:  # llama.cpp takes the first hit in hash order; vocabularies have at most one
                if t in to_id:
                    sp["eot"] = to_id[t]
                    self._mark_control(to_id[t])
                    break
        if sp["eom"] is None and "<|eom_id|>" in to_id:
            sp["eom"] = to_id["<|eom_id|>"]
            self._mark_control(sp["eom"])
        for name, texts in _FIM_TEXTS.items():
            if sp[name] is None:
                for t in texts:
                    if t in to_id:
                        sp[name] = to_id[t]
                        self._mark_control(to_id[t])
                        break
        for t, i in to_id.items():  # unused: control tokens whose text says so
            if attrs[i] & ATTR_CONTROL and "unused" in t:
                attrs[i] |= ATTR_UNUSED
        eog = {sp[k] for k in ("fim_pad", "fim_rep", "fim_sep") if sp[k] is not None}
        for t in _EOG_TEXTS:
            if t in to_id:
                eog.add(to_id[t])
                self._mark_control(to_id[t])
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss: always rendered
            if t in to_id:
                attrs[to_id[t]] = ATTR_USER_DEFINED
        eog |= {sp[k] for k in ("eos", "eot", "eom") if sp[k] is not None}
        texts = {self.texts[i] for i in eog}
        if "<|end|>" in texts and (("<|return|>" in texts and "<|call|>" in texts)
                                   or ("<|calls|>" in texts and "<|flush|>" in texts)):
            end = to_id["<|end|>"]
            eog.discard(end)
            attrs[end] = ATTR_USER_DEFINED
        if "<|tool_response>" in texts and "</s>" in texts:
            eog.discard(to_id["</s>"])
            attrs[to_id["</s>"]] = ATTR_NORMAL
        self.eog_ids = frozenset(eog)
        self._strip_attrs(md)

    def _strip_attrs(self, md: Mapping[str, Any]) -> None:
        """Per-model LSTRIP/RSTRIP attributes llama.cpp sets by model / pre-tokenizer / architecture name."""
        name = md.get("general.name")
        name = _text(name, "general.name").lower() if name is not None else ""
        arch = md.get("general.architecture")
        arch = _text(arch, "general.architecture") if arch is not None else ""
        pre, to_id, attrs = self.pre or "", self.to_id, self.attrs
        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            if "<mask>" in to_id:
                attrs[to_id["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in np.flatnonzero(attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)):
                attrs[i] |= ATTR_RSTRIP
            if "</s>" in to_id:
                attrs[to_id["</s>"]] |= ATTR_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if t in to_id:
                    attrs[to_id[t]] &= ~ATTR_RSTRIP
        elif "modern-bert" in name and "[MASK]" in to_id:
            attrs[to_id["[MASK]"]] |= ATTR_LSTRIP
