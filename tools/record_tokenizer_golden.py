"""Record llama.cpp's tokenizer behaviour as golden data for tests/test_tokenizer.py.

Needs llama_cpp (llama-cpp-python) and gguf-py; the tests need neither llama_cpp nor this script.

    python tools/record_tokenizer_golden.py unicode        # qdbg/tokenizer/_unicode_table.py from libllama
    python tools/record_tokenizer_golden.py vocabs [SMOLLM2.gguf]  # build the small vocab GGUFs
    python tools/record_tokenizer_golden.py record          # tokenize the corpus with llama.cpp

`vocabs` writes tests/golden/tokenizer/*.gguf: a tokenizer-only copy of a real SmolLM2 file
(gpt2 / smollm; all tokenizer.* keys, general.architecture, the llama.* hyperparameters, no
tensors), and small vocabularies made here: byte-level BPE with merges trained on a fixed text
(pre-tokenizers default, gpt2, llama-bpe, qwen2, smollm and aliases) and SentencePiece (pieces with
scores and <0xNN> byte tokens). `record` loads each with vocab_only=True and stores, for every corpus
string, `llama_tokenize` under each (add_special, parse_special) setting, plus `llama_token_to_piece`
and `llama_detokenize` results, in tests/golden/tokenizer/<vocab>.json.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))
GOLDEN = ROOT / "tests" / "golden" / "tokenizer"
TABLE = ROOT / "qdbg" / "tokenizer" / "_unicode_table.py"


# ---- corpus (>= 200 strings; every vocabulary is tokenized with all of them) -----------------------
_LONG = (
    "The quick brown fox jumps over the lazy dog. It's 2024-06-01 and we've got 1,234,567 reasons "
    "to test tokenizers: don't they'll break on café, naïve, Straße, Ångström? Привет, мир! Γειά σου "
    "κόσμε. مرحبا بالعالم. नमस्ते दुनिया। 你好，世界！こんにちは世界。안녕하세요 세계. Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷.\n"
    "def f(x):\n    return x ** 2  # square\n\tif (a && b) { c = d[i] + 0x1F; }\n"
    "<|im_start|>user\nHello<|im_end|>\n<start_of_turn>model\n"
)
LONG_TEXT = (_LONG * 5)[:2000]

CORPUS: list[str] = [
    # plain and mixed-case ASCII
    "", " ", "a", "A", "hello", "Hello", "HELLO", "hello world", "Hello World", "Hello, World!",
    "The quick brown fox jumps over the lazy dog.", "the THE The tHe", "camelCaseWord", "PascalCaseWord",
    "snake_case_word", "SCREAMING_SNAKE_CASE", "kebab-case-word", "MiXeD cAsE tExT", "iPhone eBay McDonald",
    "ABCdefGHIjkl", "x", "xy", "xyz", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "a b c d e f g",
    # whitespace runs
    "  ", "   ", "    hello", "hello    ", "hello    world", "\t", "\t\t", "\thello", "hello\tworld",
    "\n", "\n\n", "\n\n\n", "hello\nworld", "hello\n\nworld", "hello \n world", "hello\r\nworld",
    "\r\n\r\n", " \n \n ", "  \n", "\n  ", "a\u00a0b", "a\u3000b", "a\u2009b", "a\u2028b", "a\u0085b",
    "a\x0bb\x0cc", "a\x1cb\x1dc\x1ed\x1ff", "word \t\n word", "   leading", "trailing   ", " \t \t ",
    "x" + " " * 40 + "y", " " * 100, "\n" * 30, "\t \n" * 10,
    # digits
    "0", "1", "12", "123", "1234", "12345", "123456", "1234567", "1234567890", " 42", "a1b2c3",
    "3.14159", "1,000,000", "2024-06-01", "10:45:30", "+1 (555) 123-4567", "0x1F2E", "1e-10", "v1.2.3",
    "٣٤٥", "１２３", "²³", "Ⅻ", "½ ¾", "𝟙𝟚𝟛", "１２３４５６７",
    # contractions
    "I'm", "don't", "you're", "we've", "she'll", "he'd", "it's", "IT'S", "I'M", "DON'T", "You'Re",
    "'s", "''s", "' s", "o'clock", "rock'n'roll", " 's", "'S'T'RE", "ʼs", "it’s", "'ll've", "'", "''",
    "can't won't shouldn't", "y'all'd've",
    # punctuation and code
    "...", "!!!", "?!", "--", "---", "~", "~~", "`code`", "$100", "a+b=c", "<<>>", "|pipe|", "^caret",
    "\\backslash\\", "@mention #hashtag", "foo@example.com", "https://example.com/path?q=1&r=2#frag",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}', "SELECT * FROM t WHERE id = 42;",
    "if x != y && !z || w >= 3:", "#include <stdio.h>", "<div class=\"a\">text</div>", "**bold** _it_",
    "- item\n- item2\n  - sub", "$$\\frac{a}{b}$$", "a->b; c=>d; e::f", "«quotes» „German“ “curly”",
    "—em–en-dash", "…", "¡Hola! ¿Qué?", "§1 ¶2 †‡ •", "€5 £3 ¥9 ₹7 ₿1", "©®™", "½×÷±∞≠≤≥",
    "(╯°□°)╯︵ ┻━┻", "←↑→↓", "°C °F", "[x] (y) {z} <w>",
    # accented Latin
    "café", "naïve", "Ångström", "Straße", "ÆØÅ æøå", "ﬁnance ﬂow", "e\u0301te\u0301", "İstanbul ı",
    "Kelvin \u212a", "Ñandú", "Zażółć gęślą jaźń", "Čeština ďáblů", "Tiếng Việt có dấu", "ÀÉÎÕÜ àéîõü",
    # Cyrillic, Greek
    "Привет, мир!", "ПРИВЕТ", "Съешь же ещё этих мягких французских булок.", "Ёлка ёж", "Україна їжак ґанок",
    "Γειά σου κόσμε", "ΑΒΓΔ αβγδ", "Ἀθῆναι ᾧ", "ς σ Σ", "μm µm",
    # Arabic, Hebrew, Hindi, Thai
    "مرحبا بالعالم", "العربية", "كتـــاب", "\u200fمرحبا\u200f", "١٢٣ ٤٥٦", "שלום עולם", "नमस्ते दुनिया",
    "हिन्दी", "क्षत्रिय", "श्\u200dर", "ഇന്ത്യ", "สวัสดีครับ", "ભારત",
    # CJK
    "你好，世界！", "中文", "汉字漢字", "こんにちは世界", "カタカナ ひらがな", "ｶﾀｶﾅ", "안녕하세요 세계",
    "한국어", "日本語の文章です。", "「引用」『二重』", "一二三四五", "𠀀𪚥", "\u3131\u314f",
    # emoji
    "👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "1️⃣", "❤️", "🫠", "🫨", "😀😃😄", "🧑🏿‍💻",
    "hi👋there", "👩‍❤️‍💋‍👨",
    # control-token look-alikes
    "<|im_start|>", "<|im_end|>", "<|im_start|>user\nHi<|im_end|>\n", "<|im_start|", "|im_start|>",
    "<|im_start|><|im_end|>", "<|im_start|>>", "<<|im_start|>", "<|IM_START|>", " <|im_start|> ",
    "<start_of_turn>", "<start_of_turn>user\nhello<end_of_turn>", "<start_of_turn", "start_of_turn>",
    "<|endoftext|>", "<|endoftext|><|endoftext|>", "text<|endoftext|>more", "<s>", "</s>", "<s>hi</s>",
    "<unk>", "<|eot_id|>", "<|begin_of_text|>", "<tool>call</tool>", "<mask>", "< mask >",
    "<|fake|>", "<repo_name>", "<file_sep>x", "<jupyter_code>print(1)", "<|im_end|>x", "x<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n", "<|<|im_start|>|>",
    "<|unused_0|>", "<pad>",
    # characters llama.cpp classifies with a newer Unicode than Python's unicodedata may
    "\u0cf3", "\U0001e030", "\U00011f00\U00011f02", "\U00031350", "\U0001fae8\U0001fae9", "\u2ffc",
    "x\U00031350y", " \U0001e030x", "a\U0001e4f1\U0001e4f2b 7", "\U00011b00\U00011b01!?", "a \x1cb", " \x1c\x1c x",
    # odd code points
    "\x00", "a\x00b", "\x07\x1b[31mred\x1b[0m", "\ufffd", "\ue000", "\uffff", "\U000e0041", "\u200b",
    "a\u200db", "\ufeffBOM", "soft\u00adhyphen", "\U0010fffd", "a\ud800b",
    # mixed scripts
    "Hello世界мир", "abcабвαβγ", "test123тест", "mixed-язык_text", "NASA's 3rd ΑΠΟΛΛΩΝ mission",
    LONG_TEXT,
]


# ---- training text for the small vocabularies (no U+2000..U+2FFF: byte 0xE2 stays unmerged) ------
TRAIN_TEXT = """
The debugger steps through each operation of the model and compares the two quantized copies.
When the values diverge, it stops and shows the tensor, the layer and the position of the token.
A tokenizer turns text into numbers; the numbers are looked up in an embedding table.
Many models share the same vocabulary, but the rules that split the text are not the same.
We tested the tokens, the pieces and the decoding on a lot of sentences, numbers and symbols.
This is a simple sentence. That is another one! Is this the third? Yes, it is the third.
I'm sure you're right: we've seen it, they'll see it, she'd say it's fine and he's not wrong.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 256 1024 2048 4096 65536 3.14 2.71 1,000 42.
def main(args):
    for i in range(10):
        if i % 2 == 0:
            print("even", i)
        else:
            print("odd", i)
    return {"status": "ok", "count": len(args)}
int main(void) { int x = 0; while (x < 10) { x += 1; } return x; }
<html><body><p class="note">Hello there</p></body></html>
SELECT name, value FROM settings WHERE id = 7 ORDER BY name;
Le café est très bon, la crème brûlée aussi. Où est la bibliothèque? Ça va très bien.
Die Straße ist lang und die Brücke über den Fluss ist schön. Grüße aus München!
El niño comió una manzana en la mañana. ¿Dónde está el baño? ¡Qué bueno!
Привет! Как дела? Это простое предложение на русском языке. Москва и Санкт-Петербург.
Γεια σας! Η γλώσσα είναι ελληνική και η πόλη είναι η Αθήνα.
مرحبا، كيف حالك؟ هذه جملة بسيطة باللغة العربية.
नमस्ते, आप कैसे हैं? यह हिन्दी में एक सरल वाक्य है।
你好！今天天气很好。我们在测试分词器。中文和日文都有汉字。
こんにちは。これは日本語の文です。カタカナとひらがなもあります。
안녕하세요. 이것은 한국어 문장입니다. 감사합니다.
Emoji are fun: 😀 😃 😄 😁 👍 🎉 🚀 🐍 🦀 and flags 🇺🇸 🇩🇪.
tabs\tand\tnew\nlines\n\nand    spaces    everywhere   at   the   end   
The the THE tHe, token TOKEN Token tokens; model MODEL Model models.
"""


# ---- small vocabularies -------------------------------------------------------------------------------
N_MERGES = 400
# (text, token type) at the start of every small BPE vocabulary; 1 normal, 2 unknown, 3 control,
# 4 user-defined, 5 unused, 6 byte, 0 undefined
BPE_SPECIALS: list[tuple[str | bytes, int]] = [
    ("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<start_of_turn>", 3), ("<end_of_turn>", 3),
    ("<|begin_of_text|>", 3), ("<tool>", 4), ("</tool>", 4), ("<|eot_id|>", 1), ("<|fake|>", 1), ("<unk>", 2),
    ("<|unused_0|>", 3), ("<pad>", 5), ("<undef>", 0), ("<0x41>", 6), ("<|im_start|", 3), ("<|im", 3),
]
# normal tokens no merge reaches (ignore_merges picks whole words), a raw non-GPT-2 character, and an
# invalid-UTF-8 one-byte token (the BPE byte fallback finds it)
BPE_EXTRA: list[str | bytes] = ["Ġworld", "World", "ĠWorld", "Ġtokenizer", "中", b"\xc3"]
BPE_DROPPED_BYTE = 0xE2  # no token for this byte: llama.cpp's fallback drops it
SPM_SPECIALS: list[tuple[str, int]] = [("<unk>", 2), ("<s>", 3), ("</s>", 3)] + [
    (f"<0x{b:02X}>", 6) for b in range(256)] + [
    ("<start_of_turn>", 3), ("<end_of_turn>", 3), ("<mask>", 4), ("<|im_start|>", 4), ("<|endoftext|>", 3)]

# name -> (model, pre, extra metadata)
VOCABS: dict[str, tuple[str, str | None, dict]] = {
    "bpe_default": ("gpt2", "default", {"eos_token_id": 0}),
    "bpe_gpt2": ("gpt2", "gpt-2", {"bos_token_id": 0, "eos_token_id": 0, "add_eos_token": True}),
    "bpe_llama3": ("gpt2", "llama-bpe", {"bos_token_id": 5, "eos_token_id": 8}),
    "bpe_qwen2": ("gpt2", "qwen2", {"bos_token_id": 0, "eos_token_id": 2, "add_bos_token": False}),
    "bpe_smollm": ("gpt2", "smollm", {"bos_token_id": 1, "eos_token_id": 2}),
    "spm": ("llama", None, {}),
    "spm_noprefix": ("llama", None, {"add_space_prefix": False, "add_bos_token": False, "add_eos_token": True}),
    "spm_phi3": ("llama", None, {"general.name": "Phi-3 test"}),
}
REAL = "smollm2"


def train_bpe(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Plain byte-level BPE training: repeatedly merge the most frequent adjacent pair."""
    from collections import Counter

    from qdbg.tokenizer.bpe import byte_encode
    from qdbg.tokenizer.pretokenize import pre_tokenizer

    words = Counter(byte_encode(w) for w in pre_tokenizer("gpt-2").split(text))
    seqs = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in seqs.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def bpe_tables() -> tuple[list[str | bytes], list[int], list[str]]:
    from qdbg.tokenizer.bpe import BYTE_TO_CHAR

    merges = train_bpe(TRAIN_TEXT, N_MERGES)
    dropped = BYTE_TO_CHAR[BPE_DROPPED_BYTE]
    assert all(dropped not in a + b for a, b in merges)
    tokens: list[str | bytes] = [t for t, _ in BPE_SPECIALS]
    types = [k for _, k in BPE_SPECIALS]
    for b in range(256):
        if b != BPE_DROPPED_BYTE:
            tokens.append(BYTE_TO_CHAR[b])
            types.append(1)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
            types.append(1)
    for t in BPE_EXTRA:
        assert t not in tokens
        tokens.append(t)
        types.append(1)
    return tokens, types, [f"{a} {b}" for a, b in merges]


def spm_tables() -> tuple[list[str], list[float], list[int]]:
    """Pieces: every character of the training text, plus frequent substrings of '▁'-prefixed words.

    Scores are rounded log-frequencies, so equal scores (and llama.cpp's leftmost tie rule) occur."""
    import math
    import re as _re
    from collections import Counter

    words = Counter("\u2581" + w for w in _re.findall(r"\S+", TRAIN_TEXT))
    chars: Counter[str] = Counter()
    subs: Counter[str] = Counter()
    for w, c in words.items():
        for ch in w:
            chars[ch] += c
        for i in range(len(w)):
            for j in range(i + 2, min(len(w), i + 7) + 1):
                subs[w[i:j]] += c
    top = sorted(subs, key=lambda s: (-subs[s] * (len(s) - 1), s))[:700]
    total = sum(chars.values())
    tokens = [t for t, _ in SPM_SPECIALS]
    scores = [0.0] * len(tokens)
    types = [k for _, k in SPM_SPECIALS]
    for s in sorted(chars, key=lambda c: (-chars[c], c)) + top:
        if s in tokens:
            continue
        freq = chars[s] if len(s) == 1 else subs[s]
        tokens.append(s)
        scores.append(round(math.log(freq / total) - 0.1 * len(s), 1))
        types.append(1)
    return tokens, scores, types


def _write_gguf(path: Path, kv: dict[str, object]) -> None:
    from gguf import GGUFValueType, GGUFWriter

    w = GGUFWriter(str(path), "llama")
    for k, v in kv.items():
        if isinstance(v, bool):
            w.add_key_value(k, v, GGUFValueType.BOOL)
        elif isinstance(v, int):
            w.add_key_value(k, v, GGUFValueType.UINT32)
        elif isinstance(v, str):
            w.add_key_value(k, v, GGUFValueType.STRING)
        elif k.endswith(".scores"):
            w.add_key_value(k, v, GGUFValueType.ARRAY, sub_type=GGUFValueType.FLOAT32)
        elif k.endswith(".token_type"):
            w.add_key_value(k, v, GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
        else:
            w.add_key_value(k, v, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def small_vocab_kv(name: str, pre_override: str | None = None) -> dict[str, object]:
    model, pre, extra = VOCABS[name]
    kv: dict[str, object] = {"tokenizer.ggml.model": model}
    if model == "gpt2":
        tokens, types, merges = bpe_tables()
        kv["tokenizer.ggml.pre"] = pre_override or pre
        kv.update({"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                   "tokenizer.ggml.merges": merges})
    else:
        tokens, scores, types = spm_tables()
        kv.update({"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
                   "tokenizer.ggml.token_type": types})
    for k, v in extra.items():
        kv[k if "." in k else "tokenizer.ggml." + k] = v
    kv["tokenizer.chat_template"] = CHATML
    return kv


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")


def cmd_vocabs(args: argparse.Namespace) -> None:
    """Write the small vocab GGUFs and the tokenizer-only copy of the real SmolLM2 file."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in VOCABS:
        _write_gguf(GOLDEN / f"{name}.gguf", small_vocab_kv(name))
        print("wrote", name)
    if args.smollm2:
        from gguf import GGUFReader, GGUFValueType, GGUFWriter

        r = GGUFReader(args.smollm2)
        w = GGUFWriter(str(GOLDEN / f"{REAL}.gguf"), "llama")  # writes general.architecture
        for k, f in r.fields.items():
            if not k.startswith("tokenizer."):
                continue
            if f.types[0] == GGUFValueType.ARRAY:
                sub = f.types[1]
                vals = [bytes(f.parts[i]) for i in f.data] if sub == GGUFValueType.STRING else f.contents()
                w.add_key_value(k, vals, f.types[0], sub_type=sub)
            else:
                w.add_key_value(k, f.contents(), f.types[0])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print("wrote", REAL)


# ---- recording ------------------------------------------------------------------------------------------
SETTINGS = [(True, True), (True, False), (False, True), (False, False)]  # (add_special, parse_special)
ALIAS_PROBES = [
    "", "Hello World", "I'm don't WE'VE", "  a  b\n\n c\t\t", "1234567 ٣٤٥ ²", "café Привет 你好 👍🏽",
    "<|im_start|>user\nhi<|im_end|>", "a+b=c; x->y", "it's ok!!! ... ??", "tab\there", LONG_TEXT[:600],
]


class LlamaVocab:
    """A vocab-only llama.cpp model and the three calls the golden data needs."""

    def __init__(self, path: Path) -> None:
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        self._quiet = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda *a: None)
        L.llama_log_set(self._quiet, None)
        p = L.llama_model_default_params()
        p.vocab_only = True
        self.model = L.llama_model_load_from_file(str(path).encode(), p)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        self.L.llama_model_free(self.model)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        b = text.encode("utf-8", "surrogatepass")
        n = len(b) + 16
        arr = (self.L.llama_token * n)()
        k = self.L.llama_tokenize(self.vocab, b, len(b), arr, n, add_special, parse_special)
        if k < 0:
            raise RuntimeError(f"llama_tokenize failed ({k}) on {text!r}")
        return list(arr[:k])

    def piece(self, tid: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(1024)
        k = self.L.llama_token_to_piece(self.vocab, tid, buf, 1024, 0, special)
        if k < 0:
            raise RuntimeError(f"piece of {tid} longer than 1024 bytes")
        return buf.raw[:k]

    def detokenize(self, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        arr = (self.L.llama_token * max(1, len(ids)))(*ids)
        n = 256 + 64 * len(ids)
        buf = ctypes.create_string_buffer(n)
        k = self.L.llama_detokenize(self.vocab, arr, len(ids), buf, n, remove_special, unparse_special)
        if k < 0:
            raise RuntimeError("detokenize buffer too small")
        return buf.raw[:k]


def _ids(ids: list[int]) -> str:
    return " ".join(map(str, ids))


def record_vocab(name: str, path: Path, all_pieces: bool) -> dict:
    lv = LlamaVocab(path)
    try:
        cases = []
        used: set[int] = set()
        for text in CORPUS:
            ids = [lv.tokenize(text, a, p) for a, p in SETTINGS]
            used.update(*ids)
            detok = [lv.detokenize(ids[0], rs, us).hex() for rs, us in ((False, True), (True, False))]
            cases.append({"text": text, "ids": [_ids(x) for x in ids], "detok": detok})
        if all_pieces:
            piece_ids = list(range(lv.n_vocab))
        else:  # every id the corpus produced, the first 300, and every 97th
            piece_ids = sorted(used | set(range(300)) | set(range(0, lv.n_vocab, 97)))
        pieces = {str(i): [lv.piece(i, True).hex(), lv.piece(i, False).hex()] for i in piece_ids}
        L, v = lv.L, lv.vocab
        special = {"bos": L.llama_vocab_bos(v), "eos": L.llama_vocab_eos(v), "add_bos": L.llama_vocab_get_add_bos(v),
                   "add_eos": L.llama_vocab_get_add_eos(v),
                   "eog": [i for i in range(lv.n_vocab) if L.llama_vocab_is_eog(v, i)]}
        return {"vocab": f"{name}.gguf", "n_vocab": lv.n_vocab, "special": special, "settings": SETTINGS,
                "cases": cases, "pieces": pieces}
    finally:
        lv.close()


def record_aliases() -> dict:
    """Each pre-tokenizer name qdbg accepts, on the bpe_gpt2 vocabulary (no BOS/EOS flags set)."""
    import tempfile

    from qdbg.tokenizer.pretokenize import _NAMES

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for alias in sorted(_NAMES):
            kv = small_vocab_kv("bpe_gpt2", pre_override=alias)
            kv.pop("tokenizer.ggml.add_eos_token")
            kv["tokenizer.ggml.bos_token_id"] = 5
            path = Path(tmp) / "alias.gguf"
            _write_gguf(path, kv)
            try:
                lv = LlamaVocab(path)
            except RuntimeError:
                out[alias] = {"loaded": False}
                print(f"  llama.cpp does not load pre = {alias!r}")
                continue
            try:
                ids = [[_ids(lv.tokenize(t, a, True)) for a in (True, False)] for t in ALIAS_PROBES]
                detok = [lv.detokenize(lv.tokenize(t, True, True), False, True).hex() for t in ALIAS_PROBES]
                out[alias] = {"loaded": True, "ids": ids, "detok": detok}
            finally:
                lv.close()
    # many names share one behaviour: store each distinct result once
    results: list[dict] = []
    index: dict[str, int | None] = {}
    for alias, res in out.items():
        if not res["loaded"]:
            index[alias] = None
            continue
        if res not in results:
            results.append(res)
        index[alias] = results.index(res)
    return {"alias_probes": ALIAS_PROBES, "alias_results": results, "aliases": index}


def llama_regex_split(text: str, regexes: list[str]) -> list[bytes]:
    """llama.cpp's own unicode_regex_split(text, regexes, byte_encode=false), called through ctypes.

    The function is a C++ symbol: std::string and std::vector<std::string> (libstdc++, cxx11 ABI) are
    laid out by hand; the vector returned through the hidden result pointer is leaked (tool only)."""
    global _SPLIT_FN
    if _SPLIT_FN is None:
        fn = _libllama()._Z19unicode_regex_splitRKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERKSt6vectorIS4_SaIS4_EEb
        fn.restype = ctypes.c_void_p
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_bool]
        _SPLIT_FN = fn
    keep: list[object] = []

    def std_string(b: bytes) -> _StdString:
        buf = ctypes.create_string_buffer(b, len(b) + 1)
        keep.append(buf)
        return _StdString(ctypes.addressof(buf), len(b), max(len(b), 16), 0)

    t = std_string(text.encode("utf-8", "surrogatepass"))
    arr = (_StdString * len(regexes))(*[std_string(r.encode()) for r in regexes])
    end = ctypes.addressof(arr) + ctypes.sizeof(arr)
    vec = _StdVector(ctypes.addressof(arr), end, end)
    out = _StdVector()
    _SPLIT_FN(ctypes.addressof(out), ctypes.addressof(t), ctypes.addressof(vec), False)
    n = ((out.end or 0) - (out.begin or 0)) // ctypes.sizeof(_StdString)
    words = []
    for i in range(n):
        s = _StdString.from_address(out.begin + i * ctypes.sizeof(_StdString))
        words.append(ctypes.string_at(s.ptr, s.size))
    return words


class _StdString(ctypes.Structure):  # libstdc++ std::__cxx11::basic_string<char>
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("cap", ctypes.c_size_t),
                ("pad", ctypes.c_size_t)]


class _StdVector(ctypes.Structure):
    _fields_ = [("begin", ctypes.c_void_p), ("end", ctypes.c_void_p), ("cap", ctypes.c_void_p)]


_SPLIT_FN = None


def record_splits() -> dict:
    """llama.cpp's word splits of the corpus for each regex chain qdbg implements (lengths in code points)."""
    from qdbg.tokenizer.pretokenize import _RULES

    out = {}
    for fam, regexes in _RULES.items():
        lens = []
        for text in CORPUS:
            words = [w.decode("utf-8", "surrogatepass") for w in llama_regex_split(text, list(regexes))]
            assert "".join(words) == text
            lens.append(" ".join(str(len(w)) for w in words))
        out[fam] = {"regexes": list(regexes), "lengths": lens}
    return out


def cmd_record(_: argparse.Namespace) -> None:
    import llama_cpp

    meta = {"llama_cpp_python": llama_cpp.__version__, "corpus_size": len(CORPUS)}
    for name in [*VOCABS, REAL]:
        data = record_vocab(name, GOLDEN / f"{name}.gguf", all_pieces=name != REAL)
        data["recorded_with"] = meta
        (GOLDEN / f"{name}.json").write_text(json.dumps(data, ensure_ascii=True, separators=(",", ":")))
        print("recorded", name)
    data = {"corpus": CORPUS, "splits": record_splits(), **record_aliases(), "recorded_with": meta}
    (GOLDEN / "pretokenize.json").write_text(json.dumps(data, ensure_ascii=True, separators=(",", ":")))
    print("recorded splits and aliases")


def _libllama() -> ctypes.CDLL:
    import llama_cpp

    return ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libllama.so"))


def cmd_unicode(_: argparse.Namespace) -> None:
    """Read llama.cpp's code point flags for all of Unicode and write them as compact ranges."""
    lib = _libllama()
    flags_fn = lib._Z26unicode_cpt_flags_from_cptj  # unicode_cpt_flags unicode_cpt_flags_from_cpt(uint32_t)
    flags_fn.restype, flags_fn.argtypes = ctypes.c_uint16, [ctypes.c_uint32]
    lower_fn = lib._Z15unicode_tolowerj  # uint32_t unicode_tolower(uint32_t)
    lower_fn.restype, lower_fn.argtypes = ctypes.c_uint32, [ctypes.c_uint32]
    n = 0x110000
    flags = np.array([flags_fn(c) for c in range(n)], dtype=np.uint16) & 0x01FF  # categories + whitespace
    # qdbg matches contractions ('s 't 're 've 'm 'll 'd) with ASCII classes; that is only exact if no
    # non-ASCII code point lowercases onto one of those letters in llama.cpp's table.
    for c in range(128, n):
        low = lower_fn(c)
        if low < 128 and chr(low) in "strevmld":
            raise SystemExit(f"U+{c:04X} lowercases to {chr(low)!r}: contraction classes need updating")
    starts = np.concatenate([[0], np.flatnonzero(np.diff(flags.astype(np.int32))) + 1]).astype("<u4")
    vals = flags[starts].astype("<u2")
    body = (
        '"""llama.cpp\'s code point flags as ranges (generated by tools/record_tokenizer_golden.py unicode;\n'
        'do not edit). STARTS: little-endian uint32 range starts; FLAGS: little-endian uint16\n'
        'unicode_cpt_flags bits (categories | 0x100 whitespace) of each range."""\n\n'
        f"STARTS_B64 = (\n{_wrap(base64.b64encode(starts.tobytes()).decode())})\n"
        f"FLAGS_B64 = (\n{_wrap(base64.b64encode(vals.tobytes()).decode())})\n"
    )
    TABLE.write_text(body)
    print(f"wrote {TABLE} ({len(starts)} ranges)")


def _wrap(s: str, width: int = 96) -> str:
    return "".join(f'    "{s[i:i + width]}"\n' for i in range(0, len(s), width))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("unicode").set_defaults(fn=cmd_unicode)
    v = sub.add_parser("vocabs")
    v.add_argument("smollm2", nargs="?", help="a SmolLM2 GGUF to copy the tokenizer of")
    v.set_defaults(fn=cmd_vocabs)
    sub.add_parser("record").set_defaults(fn=cmd_record)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
