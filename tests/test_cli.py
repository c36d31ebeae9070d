"""The command line: JSON shapes, and bad input as one line on stderr with exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qdbg.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_inspect_json(capsys, synth_model):
    rc, out, _ = run(capsys, "inspect", str(synth_model("qwen2", "Q4_K_M")), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["architecture"] == "qwen2" and doc["config"]["qkv_bias"] is True
    t = {x["name"]: x for x in doc["tensors"]}
    assert t["blk.0.attn_q.bias"]["type"] == "F32" and t["blk.0.ffn_down.weight"]["bytes"] > 0


def test_logits_tokens_json_and_save(capsys, synth_model, tmp_path):
    path = str(synth_model("llama", "Q8_0"))
    out_npy = tmp_path / "l.npy"
    rc, out, _ = run(capsys, "logits", path, "--tokens", "1,5,9", "--top-k", "3", "--json",
                     "--save-logits", str(out_npy))
    doc = json.loads(out)
    assert rc == 0 and doc["tokens"] == [1, 5, 9] and len(doc["top_k"]) == 3
    assert set(doc["top_k"][0][0]) == {"id", "logit"} and len(doc["top_k"][0]) == 3
    arr = np.load(out_npy)
    assert arr.dtype == np.float32 and arr.shape == (3, 512)
    assert arr[2].argmax() == doc["top_k"][2][0]["id"]


def test_logits_prompt_uses_tokenizer(capsys, synth_model):
    path = str(synth_model("llama", "Q8_0"))
    rc, out, _ = run(capsys, "logits", path, "--prompt", "the cat", "--json")
    assert rc == 0 and json.loads(out)["tokens"][0] == 1  # BOS added as the file asks


def test_run_json(capsys, synth_model):
    a, b = str(synth_model("llama", "Q4_K_M")), str(synth_model("llama", "Q5_K_M"))
    rc, out, _ = run(capsys, "run", a, b, "--tokens", "1,20,30", "--break", "rel_rms > 0.05 and kind == 'matmul'",
                     "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["stops"] and doc["stops"][0]["metrics"]["rel_rms"] > 0.05
    assert isinstance(doc["final"]["top1_agree"], bool) and len(doc["final"]["a_top_k"]) == 10


@pytest.mark.parametrize("argv, needle", [
    (["inspect", "/nonexistent/x.gguf"], "no such file"),
    (["inspect", "/"], "is a directory"),
    (["logits", "{model}", "--tokens", "1,x"], "comma-separated integers"),
    (["logits", "{model}", "--tokens", "1,99999"], "outside the vocabulary"),
    (["run", "{model}", "{model}", "--tokens", "1", "--break", "rel_rms >> 1"], "column"),
    (["run", "{model}", "{other}", "--tokens", "1"], "differ in"),
    (["inspect", "{garbage}"], "GGUF"),
])
def test_bad_input_is_one_line_exit_2(capsys, synth_model, tmp_path, argv, needle):
    garbage = tmp_path / "g.gguf"
    garbage.write_bytes(b"GGUF" + b"\xff" * 40)
    fill = {"model": str(synth_model("llama", "Q8_0")), "other": str(synth_model("qwen3", "Q8_0")),
            "garbage": str(garbage)}
    rc, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("qdbg: error:") and needle in err, err
    assert "Traceback" not in err


def test_run_trace_report_replay(capsys, synth_model, tmp_path):
    a, b = str(synth_model("llama", "Q4_K_M")), str(synth_model("llama", "Q5_K_M"))
    trace, md = tmp_path / "s.qdbg", tmp_path / "r.md"
    rc, out, _ = run(capsys, "run", a, b, "--prompt", "the cat", "--break", "rel_rms > 0.1", "--gen", "1",
                     "--trace", str(trace), "--json")
    live = json.loads(out)
    assert rc == 0 and trace.exists()
    rc, _, _ = run(capsys, "report", str(trace), "-o", str(md))
    text = md.read_text()
    assert rc == 0 and "## Configuration" in text and "## Findings" in text and "the cat" in text
    rc, out, _ = run(capsys, "replay", str(trace), "--break", "rel_rms > 0.1", "--json")
    replayed = json.loads(out)
    assert rc == 0 and [s["op"] for s in replayed["stops"]] == [s["op"] for s in live["stops"]]
    assert replayed["final"]["kl_ab"] == live["final"]["kl_ab"]


def test_run_forced_text_driver(capsys, synth_model):
    a, b = str(synth_model("llama", "Q4_K_M")), str(synth_model("llama", "Q5_K_M"))
    rc, out, _ = run(capsys, "run", a, b, "--prompt", "the", "--driver", "text", "--text", " cat sat", "--json")
    doc = json.loads(out)
    from qdbg.model import Model

    forced = Model(a).tokenizer.encode(" cat sat", add_bos=False)
    assert rc == 0 and doc["tokens"][-len(forced):] == forced
    rc, _, err = run(capsys, "run", a, b, "--prompt", "the", "--driver", "text")
    assert rc == 2 and "--text" in err
