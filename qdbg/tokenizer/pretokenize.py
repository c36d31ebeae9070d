"""Byte-level BPE pre-tokenizers: `tokenizer.ggml.pre` name -> llama.cpp's regex chain -> word split.

llama.cpp maps each pre-tokenizer name onto a `LLAMA_VOCAB_PRE_TYPE_*` and each type onto a list of
regexes applied one after another: every regex refines the current list of segments (matches and the
gaps between them both become segments). qdbg keeps llama.cpp's regex text and translates it into a
Python `re` pattern over the collapsed text (see qdbg.tokenizer.unicode), with ECMAScript's `\\s`
spelled out as [\\t\\n\\v\\f\\r ] (Python's `\\s` also matches \\x1c-\\x1f). For the gpt2 and llama3
regexes llama.cpp runs hand-written splitters instead of std::regex; both equal the regex given
here (gpt2's splitter behaves as if the regex ended with `|\\s+`).

Supported here: the types whose rules are default, gpt2, llama3, qwen2 and starcoder/smollm, with every
name llama.cpp maps onto them. Anything else is an UnsupportedError naming the pre-tokenizer.
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

_RULES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt2": (_GPT2,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "starcoder": (r"\p{N}", _GPT2),
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
}

# names llama.cpp knows but whose rules qdbg does not implement (for a precise error message)
KNOWN_UNSUPPORTED = frozenset((
    "minicpm5", "deepseek-llm", "deepseek-coder", "deepseek-v3", "spark2_5", "youtu", "falcon", "jais-2", "gemma4",
    "granite-embed-multi-311m", "sarvam-moe", "whitespace", "qwen35", "poro-chat", "viking", "tekken", "bloom",
    "gpt3-finnish", "exaone-moe", "chameleon", "gpt-4o", "llama4", "kanana2", "talkie", "granite-embed-multi-97m",
    "tiny_aya", "cohere2moe", "superbpe", "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "hunyuan-dense",
    "hy_v4", "joyai-llm", "kimi-k2", "ufakzeka", "afmoe", "laguna", "minimax-m2", "chatglm3"))

_WS = r"\t\n\x0b\x0c\r "  # ECMAScript \s under the C locale
_PROPS = {  # llama.cpp's collapsed class for each \p{..}: stand-in char + the ASCII members it keeps
    "N": r"\xd10-9",
    "L": r"\xd2A-Za-z",
    "P": r"\xd3!-#%-*,-/:-;?-@\[-\]_\{\}",
    "M": r"\xd4",
    "S": r"\xd5\$\+<->\^`\|",
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
