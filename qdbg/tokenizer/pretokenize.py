"""Byte-level BPE pre-tokenizers: `tokenizer.ggml.pre` name -> llama.cpp's regex chain -> word split.

llama.cpp maps each pre-tokenizer name onto a `LLAMA_VOCAB_PRE_TYPE_*` and each type onto a list of
regexes applied one after another: every regex refines the current list of segments (matches and the
gaps between them both become segments). qdbg keeps llama.cpp's regex text and translates it into a
Python `re` pattern over the collapsed text (see qdbg.tokenizer.unicode), with ECMAScript's `\\s`
spelled out as [\\t\\n\\v\\f\\r ] (Python's `\\s` also matches \\x1c-\\x1f). For the gpt2 and llama3
regexes llama.cpp runs hand-written splitters instead of std::regex; both equal the regex given
here (gpt2's splitter behaves as if the regex ended with `|\\s+`).

Supported here: the types whose rules are default, gpt2, llama3, qwen2, qwen35, starcoder/smollm,
deepseek-llm, deepseek-coder and falcon, with every name llama.cpp maps onto them. Anything else is
an UnsupportedError naming the pre-tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qdbg.errors import UnsupportedError
from qdbg.tokenizer.unicode import collapse, wide_text

__all__ = ["PreTokenizer", "pre_tokenizer", "KNOWN_UNSUPPORTED"]

# regexes as llama.cpp spells them (src/llama-vocab.cpp), originally from the models' tokenizer.json
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# qwen3.5: letter runs also take combining marks (llama.cpp runs a hand-written splitter equal to this)
_QWEN35 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# deepseek-llm / deepseek-coder: literal code point classes (no \p{..}: matched on the uncollapsed text)
_DS_LETTERS = (
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377"
    "\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556"
    "\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4"
    "\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
    "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+")
_DS_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_DS_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"

_RULES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt2": (_GPT2,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "starcoder": (r"\p{N}", _GPT2),
    "deepseek_llm": ("[\r\n]", _DS_LETTERS, _DS_PUNCT, r"\s+$", _DS_CJK, r"\p{N}+"),
    "deepseek_coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _DS_CJK, r"\p{N}"),
    "qwen35": (_QWEN35,),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
}


@dataclass(frozen=True)
class _Name:
    rules: str                 # key of _RULES
    clean_spaces: bool = True  # detokenize cleanup (" ," -> ",", ...)
    ignore_merges: bool = False  # a whole word that is a token is taken as is
    add_bos: bool = False      # default of tokenizer.ggml.add_bos_token
    bos_null: bool = False     # default BOS id is none (chatglm)


_L3 = _Name("llama3", ignore_merges=True, add_bos=True)
_NAMES: dict[str, _Name] = {
    "default": _Name("default"),
    **{n: _L3 for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                        "lfm2", "jina-v5-nano")},
    "dbrx": _Name("llama3"), "smaug-bpe": _Name("llama3"),
    # glm4 takes whole-word tokens like llama3 in the llama.cpp qdbg is checked against (chatglm-bpe does not)
    "glm4": _Name("llama3", ignore_merges=True, bos_null=True), "chatglm-bpe": _Name("llama3", bos_null=True),
    **{n: _Name("gpt2") for n in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                                  "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe",
                                  "mpt", "olmo", "jais", "exaone4")},
    "trillion": _Name("gpt2", clean_spaces=False), "granite-docling": _Name("gpt2", clean_spaces=False),
    **{n: _Name("qwen2", clean_spaces=False) for n in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan",
                                                       "solar-open", "grok-2")},
    "megrez": _Name("qwen2"), "stablelm2": _Name("qwen2"),
    **{n: _Name("starcoder") for n in ("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2")},
    "command-r": _Name("starcoder", clean_spaces=False), "smollm": _Name("starcoder", clean_spaces=False),
    "deepseek-llm": _Name("deepseek_llm", clean_spaces=False),
    "deepseek-coder": _Name("deepseek_coder", clean_spaces=False),
    "qwen35": _Name("qwen35", clean_spaces=False),
    "falcon": _Name("falcon"),
}

# names llama.cpp knows but whose rules qdbg does not implement (for a precise error message)
KNOWN_UNSUPPORTED = frozenset((
    "minicpm5", "deepseek-v3", "spark2_5", "youtu", "jais-2", "gemma4",
    "granite-embed-multi-311m", "sarvam-moe", "whitespace", "poro-chat", "viking", "tekken", "bloom",
    "gpt3-finnish", "exaone-moe", "chameleon", "gpt-4o", "llama4", "kanana2", "talkie", "granite-embed-multi-97m",
    "tiny_aya", "cohere2moe", "superbpe", "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "hunyuan-dense",
    "hy_v4", "joyai-llm", "kimi-k2", "ufakzeka", "afmoe", "laguna", "minimax-m2", "chatglm3"))

_WS = r"\t\n\x0b\x0c\r "  # ECMAScript \s under the C locale
_PROPS = {  # llama.cpp's collapsed class for each \p{..}: stand-in char + the ASCII members it keeps
    "N": r"\xd10-9",
    "L": r"\xd2A-Za-z",
    "P": r"\xd3!-#%-*,-/:-;?-@\[-\]_\{\}",
    "M": r"\xd4",
    "S": r"\xd5\$\+<->\^`\|~",
}


def translate(expr: str) -> tuple[re.Pattern[str], bool]:
    """llama.cpp regex -> (Python pattern, runs-on-collapsed-text?)."""
    if expr == _GPT2:
        expr += r"|\s+"  # llama.cpp's hand-written gpt2 splitter also takes a lone trailing whitespace run
    collapsed = r"\p{" in expr
    out: list[str] = []
    inside = False
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == "\\" and i + 1 < len(expr):
            nxt = expr[i + 1]
            if nxt == "p" and expr.startswith("{", i + 2):
                end = expr.index("}", i + 3)
                body = _PROPS.get(expr[i + 3:end])
                if body is None:
                    raise UnsupportedError(f"tokenizer regex property {expr[i:end + 1]} is not supported")
                out.append(body if inside else f"[{body}]")
                i = end + 1
                continue
            if nxt in "sS":
                if inside and nxt == "S":
                    raise UnsupportedError(r"tokenizer regex uses \S inside a class")
                out.append(_WS if inside else (f"[{_WS}]" if nxt == "s" else f"[^{_WS}]"))
            elif nxt == "d":
                out.append("0-9" if inside else "[0-9]")
            else:
                out.append(c + nxt)
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        elif c == "$" and not inside:
            c = r"\Z"  # ECMAScript $ (no multiline) is end of input only
        out.append(c)
        i += 1
    return re.compile("".join(out)), collapsed


class PreTokenizer:
    """Splits text into the words llama.cpp's BPE tokenizer merges separately."""

    def __init__(self, name: str) -> None:
        info = _NAMES.get(name)
        if info is None:
            why = "is known to llama.cpp but not implemented by qdbg" if name in KNOWN_UNSUPPORTED else "is unknown"
            raise UnsupportedError(f"tokenizer.ggml.pre = {name!r} {why}")
        self.name = name
        self.rules = info.rules
        self.clean_spaces = info.clean_spaces
        self.ignore_merges = info.ignore_merges
        self.add_bos = info.add_bos
        self.bos_null = info.bos_null
        self._patterns = [translate(e) for e in _RULES[info.rules]]

    def split(self, text: str) -> list[str]:
        """The words of `text` (a non-special fragment), in order; they concatenate back to `text`."""
        if not text:
            return []
        coll = wide = None
        segs = [(0, len(text))]
        for pat, use_collapsed in self._patterns:
            if use_collapsed:
                s = coll = coll if coll is not None else collapse(text)
            else:
                s = wide = wide if wide is not None else wide_text(text)
            new: list[tuple[int, int]] = []
            for a, b in segs:
                prev = a
                for m in pat.finditer(s, a, b):
                    if m.start() > prev:
                        new.append((prev, m.start()))
                    new.append((m.start(), m.end()))
                    prev = m.end()
                if prev < b:
                    new.append((prev, b))
            segs = new
        return [text[a:b] for a, b in segs]


def pre_tokenizer(name: str | None) -> PreTokenizer:
    """The pre-tokenizer for a `tokenizer.ggml.pre` value (missing means 'default', as in llama.cpp)."""
    return PreTokenizer(name or "default")
