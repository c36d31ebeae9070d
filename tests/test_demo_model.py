"""The shipped demo model (qdbg/data/*.gguf): present, small, a complete llama.cpp `llama` GGUF.

Reads the file with gguf-py's GGUFReader only (no llama_cpp); see tools/train_demo_model.py for how it
is made and qdbg/data/DEMO_MODEL.md for its provenance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

import qdbg

DATA = Path(qdbg.__file__).resolve().parent / "data"
MODEL = DATA / "demo-llama-f16.gguf"
MAX_BYTES = 8_000_000


def _value(reader: GGUFReader, key: str):
    f = reader.fields.get(key)
    assert f is not None, f"missing metadata key {key}"
    if f.types[0] == GGUFValueType.ARRAY:
        if f.types[-1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


@pytest.fixture(scope="module")
def reader() -> GGUFReader:
    assert MODEL.is_file(), f"{MODEL} is missing"
    return GGUFReader(MODEL)


def test_only_model_in_data_and_small():
    assert [p.name for p in DATA.glob("*.gguf")] == [MODEL.name]  # qdbg.demo takes the first *.gguf
    assert MODEL.stat().st_size <= MAX_BYTES


def test_architecture_metadata(reader):
    v = lambda k: _value(reader, k)  # noqa: E731
    assert v("general.architecture") == "llama"
    assert v("general.file_type") == 1  # MOSTLY_F16
    assert (v("llama.embedding_length"), v("llama.feed_forward_length")) == (256, 768)
    assert (v("llama.block_count"), v("llama.attention.head_count"), v("llama.attention.head_count_kv")) == (4, 4, 2)
    assert v("llama.context_length") == 256
    assert v("llama.rope.dimension_count") == 64
    assert v("llama.rope.freq_base") == pytest.approx(10000.0)
    assert v("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert v("llama.vocab_size") == 2048


def test_tokenizer_metadata(reader):
    v = lambda k: _value(reader, k)  # noqa: E731
    assert (v("tokenizer.ggml.model"), v("tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    tokens, types, merges = v("tokenizer.ggml.tokens"), v("tokenizer.ggml.token_type"), v("tokenizer.ggml.merges")
    assert len(tokens) == len(types) == 2048 == len(set(tokens))
    assert len(merges) == 2048 - 256 - 1
    eot = v("tokenizer.ggml.bos_token_id")
    assert eot == v("tokenizer.ggml.eos_token_id") == 2047 and tokens[eot] == "<|endoftext|>"
    assert types[eot] == 3 and set(types[:eot]) == {1}  # CONTROL, the rest NORMAL
    assert v("tokenizer.ggml.add_bos_token") is True
    # every merge joins two tokens into a third one of the vocabulary
    vocab = set(tokens)
    for m in merges:
        a, b = m.split(" ")
        assert a in vocab and b in vocab and a + b in vocab, m
    for t in ("def", "Ġreturn", "self", "ĊĠĠĠ"):  # GPT-2 byte map: Ġ = space, Ċ = newline
        assert t in vocab, t


def test_provenance_metadata(reader):
    v = lambda k: _value(reader, k)  # noqa: E731
    hp = json.loads(v("qdbg.demo.hparams"))
    assert hp["seed"] == v("qdbg.demo.seed")
    assert len(v("qdbg.demo.corpus_sha256")) == 64
    assert 0 < v("qdbg.demo.final_val_loss") < 7.6  # below uniform over 2048 tokens (ln 2048)
    prompt = v("qdbg.demo.prompt")
    assert prompt
    note = (DATA / "DEMO_MODEL.md").read_text(encoding="utf-8")
    for needle in (str(hp["seed"]), v("qdbg.demo.corpus_sha256"), "PSF", repr(prompt)):
        assert needle in note, needle


def test_tensor_shapes_types_finite(reader):
    v = lambda k: _value(reader, k)  # noqa: E731
    e, ff, nl, hd = 256, 768, 4, 64
    kv = v("llama.attention.head_count_kv") * hd
    want = {"token_embd.weight": (e, 2048), "output_norm.weight": (e,)}
    for i in range(nl):
        b = f"blk.{i}."
        want |= {b + "attn_norm.weight": (e,), b + "ffn_norm.weight": (e,),
                 b + "attn_q.weight": (e, e), b + "attn_k.weight": (e, kv), b + "attn_v.weight": (e, kv),
                 b + "attn_output.weight": (e, e), b + "ffn_gate.weight": (e, ff), b + "ffn_up.weight": (e, ff),
                 b + "ffn_down.weight": (ff, e)}
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(want)  # tied output: no output.weight
    for name, t in got.items():
        ne = tuple(int(x) for x in t.shape)
        assert ne == want[name], name
        if len(ne) == 2:
            assert t.tensor_type == GGMLQuantizationType.F16, name
            assert all(d % 128 == 0 for d in ne) and ne[0] % 256 == 0, name  # K-quant rows: 256-blocks
        else:
            assert t.tensor_type == GGMLQuantizationType.F32, name
        a = np.asarray(t.data)
        assert np.isfinite(a).all(), name
        assert float(np.abs(a).max()) < 60000.0, name  # no F16 saturation
