"""qdbg.tokenizer against llama.cpp golden data (tests/golden/tokenizer, see tools/record_tokenizer_golden.py).

Every corpus string (276: ASCII, whitespace runs, digits, contractions, code, many scripts, emoji,
control-token look-alikes, odd code points, a 2,000-character text) must give llama.cpp's ids in every
(add_special, parse_special) setting, for a real SmolLM2 vocabulary and small vocabularies covering
each supported pre-tokenizer and SentencePiece; pieces, detokenized text and raw pre-tokenizer splits
must match too. Plus: pre-tokenizer aliases, error handling, speed, and the chat-template sandbox.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import pytest

from qdbg.errors import GGUFError, TemplateError, UnsupportedError, UsageError
from qdbg.tokenizer import Tokenizer, tokenize
from qdbg.tokenizer.metadata import read_metadata, read_metadata_gguf_py
from qdbg.tokenizer.pretokenize import _NAMES, KNOWN_UNSUPPORTED, PreTokenizer

GOLDEN = Path(__file__).parent / "golden" / "tokenizer"
VOCABS = ["smollm2", "bpe_default", "bpe_gpt2", "bpe_llama3", "bpe_qwen2", "bpe_smollm", "spm", "spm_noprefix",
          "spm_phi3"]
FAMILY_NAME = {"default": "default", "gpt2": "gpt-2", "llama3": "llama-bpe", "qwen2": "qwen2", "starcoder": "smollm",
               "qwen35": "qwen35", "deepseek_llm": "deepseek-llm", "deepseek_coder": "deepseek-coder", "falcon": "falcon"}


@lru_cache(maxsize=None)
def golden(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


@lru_cache(maxsize=None)
def metadata(name: str) -> dict:
    return read_metadata(GOLDEN / f"{name}.gguf")


@lru_cache(maxsize=None)
def tokenizer(name: str) -> Tokenizer:
    return Tokenizer.from_gguf(metadata(name))


def _ids(s: str) -> list[int]:
    return [int(x) for x in s.split()]


def _report(bad: list[str]) -> str:
    return f"{len(bad)} mismatches, first ones:\n" + "\n".join(bad[:8])


# ---- golden: llama.cpp -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VOCABS)
def test_encode_matches_llama_cpp(name: str) -> None:
    g, tok = golden(name), tokenizer(name)
    assert tok.n_vocab == g["n_vocab"]
    assert len(g["cases"]) >= 200
    bad = []
    for case in g["cases"]:
        for (add_special, parse_special), ref in zip(g["settings"], case["ids"]):
            got = tok.encode(case["text"], add_bos=None if add_special else False, parse_special=parse_special)
            if got != _ids(ref):
                bad.append(f"{case['text'][:60]!r} add_special={add_special} parse_special={parse_special}: "
                           f"qdbg {got[:20]} llama.cpp {_ids(ref)[:20]}")
    assert not bad, _report(bad)


@pytest.mark.parametrize("name", VOCABS)
def test_special_ids_match_llama_cpp(name: str) -> None:
    sp, tok = golden(name)["special"], tokenizer(name)
    none = -1  # LLAMA_TOKEN_NULL
    assert (tok.bos_id if tok.bos_id is not None else none, tok.eos_id if tok.eos_id is not None else none) == \
        (sp["bos"], sp["eos"])
    assert (tok.add_bos, tok.add_eos) == (sp["add_bos"], sp["add_eos"])
    assert sorted(tok.eog_ids) == sp["eog"]


@pytest.mark.parametrize("name", VOCABS)
def test_pieces_match_llama_cpp(name: str) -> None:
    g, tok = golden(name), tokenizer(name)
    bad = [f"id {i} {tok.token_text(int(i))!r}: {tok.piece_bytes(int(i), True)!r} / {tok.piece_bytes(int(i), False)!r}"
           f" vs {bytes.fromhex(h1)!r} / {bytes.fromhex(h0)!r}"
           for i, (h1, h0) in g["pieces"].items()
           if tok.piece_bytes(int(i), True).hex() != h1 or tok.piece_bytes(int(i), False).hex() != h0]
    assert not bad, _report(bad)


@pytest.mark.parametrize("name", VOCABS)
def test_detokenize_matches_llama_cpp(name: str) -> None:
    g, tok = golden(name), tokenizer(name)
    bad = []
    for case in g["cases"]:
        ids = _ids(case["ids"][0])
        for (rs, us), ref in zip(((False, True), (True, False)), case["detok"]):
            got = tok.decode_bytes(ids, remove_special=rs, unparse_special=us)
            if got.hex() != ref:
                bad.append(f"{case['text'][:50]!r} remove_special={rs}: {got[:60]!r} vs {bytes.fromhex(ref)[:60]!r}")
    assert not bad, _report(bad)


@pytest.mark.parametrize("family", sorted(FAMILY_NAME))
def test_pretokenizer_splits_match_llama_cpp(family: str) -> None:
    """Word splits equal llama.cpp's unicode_regex_split on its own regex list for this family."""
    g = golden("pretokenize")
    split = g["splits"][family]
    pt = PreTokenizer(FAMILY_NAME[family])
    from qdbg.tokenizer.pretokenize import _RULES
    assert list(_RULES[family]) == split["regexes"]
    bad = []
    for text, ref in zip(g["corpus"], split["lengths"]):
        got = " ".join(str(len(w)) for w in pt.split(text))
        if got != ref:
            bad.append(f"{text[:60]!r}: {got[:60]} vs {ref[:60]}")
    assert not bad, _report(bad)


def _alias_cases() -> list[str]:
    return sorted(golden("pretokenize")["aliases"])


@pytest.mark.parametrize("alias", _alias_cases())
def test_pre_tokenizer_aliases_match_llama_cpp(alias: str) -> None:
    """Every accepted tokenizer.ggml.pre name behaves as llama.cpp treats it (BOS default, splits, cleanup)."""
    g = golden("pretokenize")
    idx = g["aliases"][alias]
    assert idx is not None, f"llama.cpp did not load pre = {alias!r}"
    res = g["alias_results"][idx]
    md = dict(metadata("bpe_gpt2"))
    md["tokenizer.ggml.pre"] = alias
    md.pop("tokenizer.ggml.add_eos_token")
    md["tokenizer.ggml.bos_token_id"] = 5
    tok = Tokenizer.from_gguf(md)
    for text, refs, detok in zip(g["alias_probes"], res["ids"], res["detok"]):
        with_special = tok.encode(text)
        assert with_special == _ids(refs[0]), (alias, text)
        assert tok.encode(text, add_bos=False) == _ids(refs[1]), (alias, text)
        assert tok.decode_bytes(with_special).hex() == detok, (alias, text)


def test_every_supported_name_was_recorded() -> None:
    assert set(_NAMES) == set(golden("pretokenize")["aliases"])
    assert not set(_NAMES) & KNOWN_UNSUPPORTED


# ---- behaviour ----------------------------------------------------------------------------------------

def test_smollm2_properties() -> None:
    tok = tokenizer("smollm2")
    assert (tok.model, tok.pre, tok.n_vocab) == ("gpt2", "smollm", 49152)
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (1, 2, False, False)
    assert {0, 2} <= tok.eog_ids
    assert tok.encode("<|im_start|>user") == [1, 4093]
    assert tok.encode("<|im_start|>", parse_special=False) != [1]
    assert tok.is_special(1) and not tok.is_special(4093)
    assert tok.piece(4093) == "user"


def test_add_bos_flag() -> None:
    tok = tokenizer("bpe_llama3")  # llama-bpe: BOS added by default
    assert tok.add_bos and tok.encode("hi")[0] == tok.bos_id
    assert tok.encode("hi", add_bos=False)[0] != tok.bos_id
    smol = tokenizer("smollm2")  # file says no BOS; add_bos=True forces one
    assert smol.encode("hi", add_bos=True) == [smol.bos_id, *smol.encode("hi")]
    spm = tokenizer("spm_noprefix")  # add_eos_token = true
    assert spm.encode("hi")[-1] == spm.eos_id and spm.encode("hi", add_bos=False)[-1] != spm.eos_id


def test_decode_round_trip() -> None:
    tok = tokenizer("smollm2")
    for case in golden("smollm2")["cases"]:
        text = case["text"]
        if "\ud800" in text or any(ord(c) < 32 and c not in "\t\n\r" for c in text):
            continue  # lone surrogates and some control bytes have no token: llama.cpp drops them too
        assert tok.decode(tok.encode(text, add_bos=False, parse_special=True)) == text


def test_pieces_for_display() -> None:
    tok = tokenizer("smollm2")
    ids = tok.encode("café 👍")
    raw = [tok.piece_bytes(i) for i in ids]
    assert b"".join(raw) == "café 👍".encode() and tok.decode(ids) == "café 👍"
    shown = tok.pieces(ids)
    for b, p in zip(raw, shown):  # a piece holding part of a UTF-8 sequence shows its bytes as \xNN
        try:
            assert p == b.decode()
        except UnicodeDecodeError:
            assert "\\x" in p
    assert any("\\x" in p for p in shown)
    assert tokenizer("spm").piece(tokenizer("spm").encode("\u2581")[1]) == " "  # SPM: U+2581 shows as a space


def test_bad_ids_are_usage_errors() -> None:
    tok = tokenizer("bpe_gpt2")
    for bad in (-1, tok.n_vocab, "x"):
        with pytest.raises(UsageError):
            tok.piece(bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        tok.decode([0, 10**9])
    with pytest.raises(UsageError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_unknown_model_and_pre_are_named() -> None:
    md = dict(metadata("bpe_gpt2"))
    with pytest.raises(UnsupportedError, match="'no-such-pre'.*unknown"):
        Tokenizer.from_gguf({**md, "tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(UnsupportedError, match="'deepseek-v3'.*not implemented"):
        Tokenizer.from_gguf({**md, "tokenizer.ggml.pre": "deepseek-v3"})
    with pytest.raises(UnsupportedError, match="'bert'"):
        Tokenizer.from_gguf({**md, "tokenizer.ggml.model": "bert"})
    no_pre = {k: v for k, v in md.items() if k != "tokenizer.ggml.pre"}
    assert Tokenizer.from_gguf(no_pre).pre is None  # llama.cpp falls back to 'default', and so do we


@pytest.mark.parametrize("change", [
    {"tokenizer.ggml.model": None}, {"tokenizer.ggml.tokens": None}, {"tokenizer.ggml.merges": None},
    {"tokenizer.ggml.tokens": "abc"}, {"tokenizer.ggml.tokens": ["a", "a"]}, {"tokenizer.ggml.tokens": [1, 2]},
    {"tokenizer.ggml.token_type": [1]}, {"tokenizer.ggml.scores": [[1.0]]}, {"tokenizer.ggml.model": 7},
    {"tokenizer.ggml.pre": "glm4", "tokenizer.ggml.add_bos_token": True},  # glm4 has no default BOS
])
def test_malformed_metadata_is_gguf_error(change: dict) -> None:
    md = dict(metadata("bpe_gpt2"))
    md.pop("tokenizer.ggml.bos_token_id", None)
    for k, v in change.items():
        if v is None:
            md.pop(k, None)
        else:
            md[k] = v
    with pytest.raises(GGUFError):
        Tokenizer.from_gguf(md)


class _LazyStrings:
    """Stand-in for a lazy GGUF string array: only len() and get_bytes(i)."""

    def __init__(self, items: list) -> None:
        self._b = [x if isinstance(x, bytes) else x.encode() for x in items]

    def __len__(self) -> int:
        return len(self._b)

    def get_bytes(self, i: int) -> bytes:
        return self._b[i]


def test_lazy_string_arrays_and_both_readers_agree() -> None:
    plain = read_metadata_gguf_py(GOLDEN / "bpe_gpt2.gguf")
    lazy = {k: _LazyStrings(v) if k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges") else v
            for k, v in plain.items()}
    text = "Hello World 123 — 中文 <|im_start|>x"
    ref = tokenizer("bpe_gpt2").encode(text)
    assert Tokenizer.from_gguf(plain).encode(text) == ref
    assert Tokenizer.from_gguf(lazy).encode(text) == ref


def test_from_path_cache_and_tokenize_entry_point() -> None:
    path = GOLDEN / "smollm2.gguf"
    assert Tokenizer.from_path(path) is Tokenizer.from_path(path)
    pairs = tokenize(path, "Hello world")
    assert [p for _, p in pairs] == ["Hello", " world"]
    chat = tokenize(path, "Hi", chat=True, system="Be brief.")
    assert chat[0] == (1, "<|im_start|>") and chat[-1][1] == "\n"
    with pytest.raises(GGUFError):
        Tokenizer.from_path(GOLDEN / "missing.gguf")


def test_speed_2000_chars_smollm2() -> None:
    text = golden("smollm2")["cases"][-1]["text"]
    assert len(text) == 2000
    t0 = time.perf_counter()
    tok = Tokenizer.from_gguf(metadata("smollm2"))
    tok.encode(text)  # first call also builds the merge ranks
    cold = time.perf_counter() - t0
    tok._bpe._cache.clear()  # no word cache: the worst case for a fresh prompt
    t0 = time.perf_counter()
    tok.encode(text)
    warm = time.perf_counter() - t0
    assert warm < 0.5, f"2000 chars took {warm:.3f}s"
    assert cold < 3.0, f"build + first encode took {cold:.3f}s"


# ---- chat templates -------------------------------------------------------------------------------

def test_render_smollm2_chat_template() -> None:
    tok = tokenizer("smollm2")
    msgs = [{"role": "user", "content": "Hi"}]
    out = tok.render_chat(msgs)
    assert out.startswith("<|im_start|>system\n") and out.endswith("<|im_start|>user\nHi<|im_end|>\n"
                                                                    "<|im_start|>assistant\n")
    assert tok.render_chat(msgs, system="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert not tok.render_chat(msgs, add_generation_prompt=False).endswith("assistant\n")
    assert tok.encode(out)[0] == 1


def test_template_variables_and_helpers() -> None:
    tok = tokenizer("spm")
    tmpl = ("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ messages|length }}|"
            "{{ messages[0]|tojson }}|{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
            "{{ m.role }}{% endfor %}|{{ strftime_now('%Y')|length }}|{% generation %}g{% endgeneration %}")
    out = tok.render_chat([{"role": "user", "content": "é<"}, {"role": "x", "content": ""}], template=tmpl)
    assert out == '<s>|</s>|True|2|{"role": "user", "content": "é<"}|user|4|g'
    with pytest.raises(TemplateError, match="raised: bad role"):
        tok.render_chat([], template="{{ raise_exception('bad role') }}")
    with pytest.raises(TemplateError, match="no tokenizer.chat_template"):
        Tokenizer.from_gguf({k: v for k, v in metadata("spm").items() if k != "tokenizer.chat_template"}) \
            .render_chat([{"role": "user", "content": "x"}])
    with pytest.raises(TemplateError, match="syntax"):
        tok.render_chat([], template="{% for %}")
    with pytest.raises(TemplateError):
        tok.render_chat([{"role": "user", "content": object()}])


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch {marker}') }}",
    "{{ namespace.__init__.__globals__.__builtins__['__import__']('os').system('touch {marker}') }}",
    "{{ lipsum.__globals__['os'].system('touch {marker}') }}",
    "{{ lipsum|attr('__globals__') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ messages|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ messages['__class__'] }}",
    "{% set n = '__cla' ~ 'ss__' %}{{ messages|attr(n) }}",
    "{% set n = '__glo' ~ 'bals__' %}{{ (lipsum|attr(n))['os'].system('touch {marker}') }}",
    "{% set n = '__in' ~ 'it__' %}{{ cycler[n] }}",
    "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "{{ '{m.__init__.__globals__[os]}'.format_map({'m': cycler}) }}",
    "{{ '{0.__globals__}'.format(lipsum) }}",
    "{{ namespace.mro() }}",
    "{{ (1).__class__.__subclasses__() }}",
    "{{ range.__self__ }}",
    "{{ cycler.reset.__func__.__globals__ }}",
    "{{ raise_exception.__globals__['TemplateError'] }}",
    "{% set x = messages.append({'role': 'evil'}) %}",
    "{% set x = messages[0].update({'content': 'evil'}) %}",
    "{{ messages.pop() }}",
    "{{ 'a' * 100000000 }}",
    "{{ 2 ** 1000000000 }}",
    "{{ range(1000000000)|list }}",
    "{% for x in messages %}{{ x.__dict__ }}{% endfor %}",
]


@pytest.mark.parametrize("payload", SANDBOX_ESCAPES)
def test_template_sandbox_blocks(payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateError):
        tokenizer("smollm2").render_chat(msgs, template=payload.replace("{marker}", str(marker)))
    assert not marker.exists()
    assert msgs == [{"role": "user", "content": "hi"}]
