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
    counts: dict[str, int] = {}
    for x in doc["tensors"]:
        counts[x["type"]] = counts.get(x["type"], 0) + 1
    assert doc["types"] == counts  # a {type: count} mapping, not a preformatted string


def test_logits_tokens_json_and_save(capsys, synth_model, tmp_path):
    path = str(synth_model("llama", "Q8_0"))
    out_npy = tmp_path / "l.npy"
    rc, out, _ = run(capsys, "logits", path, "--tokens", "1,5,9", "--top-k", "3", "--json",
                     "--save-logits", str(out_npy))
    doc = json.loads(out)
    assert rc == 0 and doc["tokens"] == [1, 5, 9] and len(doc["top_k"]) == 3
    assert set(doc["top_k"][0][0]) == {"id", "logit", "prob", "piece", "piece_bytes"} and len(doc["top_k"][0]) == 3
    arr = np.load(out_npy)
    assert arr.dtype == np.float32 and arr.shape == (3, 512)
    assert arr[2].argmax() == doc["top_k"][2][0]["id"]
    from qdbg.model import Model

    tok = Model(path).tokenizer
    for p, row in enumerate(doc["top_k"]):
        x = arr[p].astype(np.float64)
        prob = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
        for e in row:
            assert e["prob"] == pytest.approx(prob[e["id"]], rel=1e-9)
            assert bytes.fromhex(e["piece_bytes"]) == tok.piece_bytes(e["id"])
    assert doc["pieces"] == ["<s>"] + [tok.piece(i) for i in (5, 9)]


def test_json_byte_pieces_are_bytes_not_escapes(capsys, synth_model):
    """A byte-fallback token that is not UTF-8 by itself: piece null, its byte in hex; never '\\xe6'."""
    path = str(synth_model("llama", "Q8_0"))
    from qdbg.model import Model

    tok = Model(path).tokenizer
    byte_id = next(i for i in range(tok.n_vocab) if tok.piece_bytes(i) == b"\xe6")
    rc, out, _ = run(capsys, "logits", path, "--tokens", f"1,{byte_id}", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["pieces"] == ["<s>", None] and doc["piece_bytes"] == ["3c733e", "e6"]
    assert "\\x" not in out
    rc, out, _ = run(capsys, "tokenize", path, "é", "--no-bos", "--json")  # " " then byte tokens c3, a9
    doc = json.loads(out)
    assert rc == 0 and "".join(doc["piece_bytes"]) == " é".encode().hex() and None in doc["pieces"]


def test_tokenize_may_return_no_tokens(capsys, synth_model):
    """Like llama.cpp: tokenize prints an empty list; commands that run a model reject it."""
    path = str(synth_model("llama", "Q8_0"))
    rc, out, _ = run(capsys, "tokenize", path, "", "--no-bos", "--json")
    assert rc == 0 and json.loads(out) == {"ids": [], "pieces": [], "piece_bytes": []}
    rc, out, _ = run(capsys, "tokenize", path, "", "--no-bos")
    assert rc == 0 and out == ""
    rc, _, err = run(capsys, "logits", path, "--prompt", "", "--no-bos")
    assert rc == 2 and "no tokens" in err and err.count("\n") == 1


def test_explicit_empty_system_and_chat_template_file(capsys, synth_model, tmp_path):
    """--system "" is a system message (no default one from the template); --chat-template replaces the file's."""
    path = str(synth_model("llama", "Q8_0"))
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text("{% if messages[0]['role'] != 'system' %}[sys]default[/sys]{% endif %}"
                    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")

    def rendered(*extra):
        rc, out, err = run(capsys, "tokenize", path, "hi", "--no-bos", "--chat", "--chat-template", str(tmpl),
                           "--json", *extra)
        assert rc == 0, err
        return b"".join(bytes.fromhex(h) for h in json.loads(out)["piece_bytes"]).decode()

    assert rendered() == " [sys]default[/sys][user]hi"
    assert rendered("--system", "") == " [system][user]hi"
    assert rendered("--system", "be brief") == " [system]be brief[user]hi"
    from qdbg.errors import TemplateError
    from qdbg.tokenizer.chat import render_chat

    with pytest.raises(TemplateError, match="--chat-template FILE"):
        render_chat(None, [{"role": "user", "content": "hi"}])


def test_python_dash_m_qdbg(synth_model):
    import subprocess
    import sys

    path = str(synth_model("llama", "Q8_0"))
    r = subprocess.run([sys.executable, "-m", "qdbg", "tokenize", path, "the", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["ids"][0] == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "qdbg", "inspect", "/nonexistent.gguf"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "qdbg: error: /nonexistent.gguf: no such file"


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
    final = doc["final"]
    assert len(final["a_top_k"]) == 10
    # top1_agree is what the two models' own logits say at the last position
    from qdbg.engine.forward import Engine
    from qdbg.model import Model

    la, lb = (Engine(Model(p)).logits([1, 20, 30])[-1] for p in (a, b))
    assert final["a_top_k"][0]["id"] == int(la.argmax()) and final["b_top_k"][0]["id"] == int(lb.argmax())
    assert final["top1_agree"] is (int(la.argmax()) == int(lb.argmax()))
    assert (2 in final["flip_positions"]) is (not final["top1_agree"])


def test_run_lists_every_breakpoint_with_hits_and_kl_stops_carry_kl(capsys, synth_model):
    a, b = str(synth_model("llama", "Q4_K_M")), str(synth_model("llama", "Q5_K_M"))
    argv = ["run", a, b, "--tokens", "1,20,30", "--break", "kl > 0", "--break", "rel_rms > 1e9"]
    rc, out, _ = run(capsys, *argv, "--json")
    doc = json.loads(out)
    assert rc == 0 and [(bp["expr"], bp["hits"]) for bp in doc["breakpoints"]] == [("kl > 0", 1), ("rel_rms > 1e9", 0)]
    (stop,) = doc["stops"]
    assert stop["op"] == "result_output" and stop["pass"] == 0 and "step" not in stop
    assert stop["logits"]["kl_ab"] == doc["final"]["kl_ab"] > 0
    rc, out, _ = run(capsys, *argv)
    lines = out.splitlines()
    assert rc == 0 and "breakpoint 1: kl > 0   hits 1" in lines and "breakpoint 2: rel_rms > 1e9   hits 0" in lines
    row = next(ln for ln in lines if "result_output" in ln)
    assert f"{stop['logits']['kl_ab']:.4g}" in row


def test_piped_text_is_not_cut_or_wrapped(capsys, synth_model):
    """capsys is not a terminal: full op names, one line per header, no ellipses."""
    a, b = str(synth_model("llama", "Q4_K_M")), str(synth_model("llama", "Q5_K_M"))
    rc, out, _ = run(capsys, "run", a, b, "--tokens", "1,20,30", "--break", "kind == 'norm'")
    lines = out.splitlines()
    assert rc == 0 and "…" not in out
    assert lines[0].startswith("A = ") and lines[0].endswith("3 tokens")
    assert lines[1].startswith("numerics: exact") and lines[2].startswith("breakpoint 1:")
    for name in ("attn_norm-0", "ffn_norm-1", "result_norm"):
        assert any(f" {name} " in ln for ln in lines), name
    rc, out, _ = run(capsys, "inspect", a)
    assert rc == 0 and "…" not in out and any(ln.startswith("blk.1.attn_output.weight ") for ln in out.splitlines())


def test_inspect_two_files_lists_type_differences(capsys, synth_model):
    a, b = synth_model("llama", "Q4_K_M"), synth_model("llama", "Q5_K_M")
    from qdbg.model import Model

    ma, mb = Model(a), Model(b)
    expect = [n for n in ma.tensors if ma.tensors[n].qtype != mb.tensors[n].qtype]
    rc, out, _ = run(capsys, "inspect", str(a), str(b), "--json")
    doc = json.loads(out)
    assert rc == 0 and [d["name"] for d in doc["differ"]] == expect and expect
    d = doc["differ"][0]
    t = d["name"]
    assert (d["a_type"], d["b_type"]) == (ma.tensors[t].qtype.name, mb.tensors[t].qtype.name)
    assert (d["a_bytes"], d["b_bytes"]) == (ma.tensors[t].n_bytes, mb.tensors[t].n_bytes)
    assert doc["same"] == len(ma.tensors) - len(expect) and doc["only_a"] == doc["only_b"] == []
    rc, out, _ = run(capsys, "inspect", str(a), str(b))
    listed = [ln.split()[0] for ln in out.splitlines() if ln.startswith(("token_embd", "blk.", "output"))]
    assert rc == 0 and listed == expect and f"{len(expect)} tensors differ in type" in out


@pytest.mark.parametrize("argv, needle", [
    (["inspect", "/nonexistent/x.gguf"], "no such file"),
    (["inspect", "/"], "is a directory"),
    (["logits", "{model}", "--tokens", "1,x"], "comma-separated integers"),
    (["logits", "{model}", "--tokens", "1,99999"], "outside the vocabulary"),
    (["run", "{model}", "{model}", "--tokens", "1", "--break", "rel_rms >> 1"], "column"),
    (["run", "{model}", "{other}", "--tokens", "1"], "differ in"),
    (["inspect", "{garbage}"], "GGUF"),
    # option errors are found before any file is read: the garbage model is never opened
    (["logits", "{garbage}", "--tokens", ""], "--tokens is empty"),
    (["logits", "{garbage}", "--tokens", "1", "--top-k", "0"], "--top-k 0"),
    (["logits", "{garbage}", "--tokens", "1", "--system", "x"], "--system only applies with --chat"),
    (["logits", "{garbage}", "--tokens", "1", "--chat"], "--tokens are used exactly"),
    (["run", "{garbage}", "{garbage}", "--tokens", "1", "--text", "hi"], "add --driver text"),
    (["run", "{garbage}", "{garbage}", "--tokens", "1", "--driver", "text"], "--driver text needs --text"),
    (["run", "{garbage}", "{garbage}", "--tokens", "1", "--driver", "b"], "add --gen N"),
    (["run", "{garbage}", "{garbage}", "--tokens", "1", "--gen", "-1"], "--gen -1"),
    (["run", "{garbage}", "{garbage}", "--tokens", "1", "--trace", "/nonexistent/x"], "/nonexistent/x"),
    (["run", "{garbage}", "{garbage}", "--tokens", "1", "--trace", "{tmp}/t", "--trace-budget", "12Q"],
     "not a size: '12Q'"),
    (["run", "{garbage}", "{garbage}", "--tokens", "1", "--trace-budget", "1M"], "only applies with --trace"),
    (["inspect", "{garbage}", "{garbage}", "{garbage}"], "one file, or two"),
])
def test_bad_input_is_one_line_exit_2(capsys, synth_model, tmp_path, argv, needle):
    garbage = tmp_path / "g.gguf"
    garbage.write_bytes(b"GGUF" + b"\xff" * 40)
    fill = {"model": str(synth_model("llama", "Q8_0")), "other": str(synth_model("qwen3", "Q8_0")),
            "garbage": str(garbage), "tmp": str(tmp_path)}
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
