"""`qdbg scan`: the per-prompt work against per-prompt Engine.logits runs, the three runners agree,
the noise floor's definition, the prompt file, the CLI's JSON/CSV/--open, and bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from qdbg.cli import main
from qdbg.engine.forward import Engine
from qdbg.errors import UsageError
from qdbg.model import Model
from qdbg.noise import noise_floor, shadow_settings, top2_margin, within_noise
from qdbg.numerics import RunSettings
from qdbg.scan import ScanConfig, read_prompts, scan_prompt
from qdbg.scan.prompts import PromptItem
from qdbg.scan.work import tokenize

PROMPTS = ["Hello world, how are you", "The quick brown fox", "a b c d e f g", "zzz", "x"]


@pytest.fixture(scope="module")
def pair(synth_model):
    return {lab: str(synth_model("llama", ft)) for lab, ft in (("A", "Q4_K_M"), ("B", "Q5_K_M"), ("R", "Q8_0"))}


@pytest.fixture(scope="module")
def items():
    return [PromptItem(i, i + 1, t) for i, t in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def settings():
    return RunSettings(n_ubatch=4)  # several micro-batches per prompt, as llama.cpp splits them


@pytest.fixture(scope="module")
def inline(pair, items, settings):
    cfg = ScanConfig(a=pair["A"], b=pair["B"], settings=settings, gen=2)
    return cfg, [scan_prompt(cfg, it) for it in items]


def _logits_flips(pair, tokens, settings, decode):
    """Flips as `qdbg logits` on each side gives them: argmax per position of A's and B's logits."""
    la = Engine(Model(pair["A"]), settings=settings).logits(tokens, decode=decode)
    lb = Engine(Model(pair["B"]), settings=settings).logits(tokens, decode=decode)
    return [int(p) for p in np.flatnonzero(la.argmax(1) != lb.argmax(1))], la


def _key(r):
    return (r.index, r.tokens, r.flips, r.margins, r.kl_ab_mean, r.kl_ba_max, r.first_op_over, r.error)


# --- the per-prompt work ---------------------------------------------------------------------

def test_flips_equal_per_prompt_logits(pair, items, settings, inline):
    _, results = inline
    model_a = Model(pair["A"])
    total = 0
    for it, r in zip(items, results):
        assert r.error is None
        assert r.tokens[:r.n_tokens] == tokenize(model_a, it, chat=False) and r.n_gen == 2
        flips, la = _logits_flips(pair, r.tokens, settings, decode=2)
        assert r.flips == flips
        # the generated tokens are A's argmax, one decode at a time
        n = r.n_tokens
        assert r.tokens[n:] == [int(la[n - 1].argmax()), int(la[n].argmax())]
        total += len(flips)
    assert total > 0  # the synthetic pair does disagree somewhere


def test_first_layer_over_and_metrics(pair, settings, inline):
    _, results = inline
    r = results[0]
    assert r.first_layer_over == 0 and r.first_op_over.endswith("-0")
    assert r.first_over_rel_rms > 0.05
    assert 0 <= r.overlap <= 1 and r.kl_ab_max >= r.kl_ab_mean > 0
    # with a threshold nothing reaches, there is no first layer over
    cfg = ScanConfig(a=pair["A"], b=pair["B"], settings=settings, threshold=1e9)
    r2 = scan_prompt(cfg, PromptItem(0, 1, PROMPTS[0]))
    assert r2.first_layer_over is None and r2.first_op_over is None
    assert r2.flips == [p for p in r.flips if p < r2.n_tokens]  # same logits, no decoded tokens


def test_ref_says_who_agrees(pair, settings):
    cfg = ScanConfig(a=pair["A"], b=pair["B"], ref=pair["R"], settings=settings)
    r = scan_prompt(cfg, PromptItem(0, 1, PROMPTS[1]))
    lr = Engine(Model(pair["R"]), settings=settings).logits(r.tokens)
    assert r.flips
    for m in r.margins:
        top = int(lr[m["pos"]].argmax())
        assert m["ref_top1"] == top
        assert m["ref_agrees"] == ("A" if top == m["a_id"] else "B" if top == m["b_id"] else "neither")
    assert r.ref_closer == ("A" if r.kl_ref_a_mean < r.kl_ref_b_mean else "B")


def test_prompt_too_long_is_reported_and_scan_goes_on(pair):
    cfg = ScanConfig(a=pair["A"], b=pair["B"], settings=RunSettings(n_ctx=16))  # 256 after padding
    long = scan_prompt(cfg, PromptItem(0, 1, "ab " * 300))
    assert long.error and "more than the context (256)" in long.error and long.flips == []
    ok = scan_prompt(cfg, PromptItem(1, 2, "zzz"))
    assert ok.error is None and ok.n_tokens > 0


# --- noise floor -----------------------------------------------------------------------------

def test_shadow_settings():
    s = RunSettings(n_ubatch=512, flash_attn=False)
    got = shadow_settings(s, 10)
    assert [lab for lab, _ in got] == ["flash_attn=on", "ubatch=5"]
    assert got[0][1].flash_attn and got[1][1].n_ubatch == 5
    assert [lab for lab, _ in shadow_settings(s, 1)] == ["flash_attn=on"]  # one token: one split
    # half the prompt splits 8 tokens like ubatch 4 already does -> half the ubatch instead
    assert [lab for lab, _ in shadow_settings(RunSettings(n_ubatch=4, flash_attn=True), 8)] == \
        ["flash_attn=off", "ubatch=2"]


def test_noise_floor_definition(pair):
    m = Model(pair["A"])
    toks = Engine(m).model.tokenizer.encode("The quick brown fox")
    s = RunSettings()
    nf = noise_floor(m, toks, settings=s)
    base = Engine(m, settings=s).logits(toks)
    bm, ids = top2_margin(base)
    want = np.zeros(len(toks))
    for _, st in shadow_settings(s, len(toks)):
        sm, _ = top2_margin(Engine(m, settings=st).logits(toks), ids)
        want = np.maximum(want, np.abs(sm - bm))
    np.testing.assert_array_equal(nf.floor, want)
    np.testing.assert_array_equal(nf.base_margin, bm)
    assert nf.shadows == ["flash_attn=on", f"ubatch={(len(toks) + 1) // 2}"]
    assert (nf.floor > 0).any()  # another valid llama.cpp run does move some bits
    assert within_noise(0.01, 0.5, 0.02) and not within_noise(0.03, 0.5, 0.02)


def test_scan_noise_marks_flips(pair, settings):
    cfg = ScanConfig(a=pair["A"], b=pair["B"], settings=settings, noise=True)
    r = scan_prompt(cfg, PromptItem(0, 1, PROMPTS[1]))
    nf = noise_floor(Model(pair["A"]), r.tokens, settings=settings)
    assert r.margins
    for m in r.margins:
        assert m["noise"] == nf.at(m["pos"])
        assert m["within_noise"] == (min(m["a"], m["b"]) <= m["noise"])
    assert r.n_within_noise == sum(m["within_noise"] for m in r.margins)


# --- runners ---------------------------------------------------------------------------------

def test_process_workers_equal_inline(items, inline):
    from qdbg.scan.runners import run_processes

    cfg, results = inline
    got = sorted(run_processes(cfg, items, 2), key=lambda r: r.index)
    assert [_key(r) for r in got] == [_key(r) for r in results]


def test_dask_local_cluster_equals_inline(items, inline):
    distributed = pytest.importorskip("dask.distributed")
    from qdbg.scan.runners import run_dask

    cfg, results = inline
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        got = sorted(run_dask(cfg, items, cluster.scheduler_address), key=lambda r: r.index)
    assert [_key(r) for r in got] == [_key(r) for r in results]


def test_scan_modules_do_not_import_ui():
    code = ("import sys, qdbg.scan, qdbg.scan.runners, qdbg.noise; "
            "bad = [m for m in ('textual', 'rich') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-300:]


# --- the prompt file -------------------------------------------------------------------------

def test_read_prompts_text_and_jsonl(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("first\n\n  \nsecond line\n")
    got = read_prompts(p)
    assert [(i.index, i.line, i.text) for i in got] == [(0, 1, "first"), (1, 4, "second line")]
    j = tmp_path / "p.jsonl"
    j.write_text('{"text": "hi"}\n\n{"messages": [{"role": "user", "content": "yo"}]}\n')
    got = read_prompts(j)
    assert got[0].text == "hi" and got[1].messages == (("user", "yo"),) and got[1].line == 3
    # a .txt whose first line is a JSON object is read as JSONL too
    k = tmp_path / "k.txt"
    k.write_text('{"text": "a"}\n')
    assert read_prompts(k)[0].text == "a"


@pytest.mark.parametrize("content,msg", [
    ("", "no prompts"),
    ("\n\n", "no prompts"),
    ('{"text": "a"}\n{"text": \n', ":2: malformed JSON line"),
    ('{"text": "a"}\n\n{"other": 1}\n', ":3: a JSON line needs"),
    ('{"text": "a"}\n[1, 2]\n', ":2: expected a JSON object"),
    ('{"messages": [{"role": "user"}]}\n', ":1: each message needs"),
])
def test_read_prompts_bad(tmp_path, content, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(UsageError, match=msg.replace("[", r"\[")):
        read_prompts(p)


# --- the command -----------------------------------------------------------------------------

def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def prompt_file(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(PROMPTS[:3]) + "\n")
    return p


def test_cli_json_and_csv(capsys, pair, prompt_file, tmp_path, settings):
    out_csv = tmp_path / "scan.csv"
    rc, out, err = run(capsys, "scan", pair["A"], pair["B"], "--prompts", str(prompt_file), "--ubatch", "4",
                       "--workers", "1", "--json", "--csv", str(out_csv))
    assert rc == 0, err
    doc = json.loads(out)
    prompts, summary = doc["prompts"], doc["summary"]
    assert len(prompts) == 3
    for key in ("index", "text", "n_tokens", "flips", "margins", "kl_ab_mean", "kl_ab_max", "kl_ba_mean",
                "overlap", "first_layer_over"):
        assert key in prompts[0]
    # severity order: flips first, then KL
    keys = [(-len(p["flips"]), -p["kl_ab_mean"]) for p in prompts]
    assert keys == sorted(keys)
    for p in prompts:
        flips, _ = _logits_flips(pair, p["tokens"], settings, 0)
        assert p["flips"] == flips and p["text"] == PROMPTS[p["index"]]
    assert summary["n_prompts"] == 3 and summary["prompts_with_flip"] == sum(1 for p in prompts if p["flips"])
    assert summary["flipped_positions"] == sum(len(p["flips"]) for p in prompts)
    assert summary["first_over_ops"][0][1] >= 1
    rows = list(csv.DictReader(out_csv.open()))
    assert [int(r["index"]) for r in rows] == [p["index"] for p in prompts]
    assert rows[0]["flips"] == " ".join(map(str, prompts[0]["flips"]))
    assert "wrote" in err


def test_cli_table_and_csv_to_stdout(capsys, pair, prompt_file):
    rc, out, _ = run(capsys, "scan", pair["A"], pair["B"], "--prompts", str(prompt_file), "--workers", "1",
                     "--ref", pair["R"], "--csv", "-")
    assert rc == 0
    assert "prompts with a flip:" in out and "closer to R:" in out and "first over rel_rms 5%" in out
    assert "rank,index,line,text" in out


def test_cli_open_positions_tui_at_first_flip(capsys, monkeypatch, pair, prompt_file):
    import qdbg.cli

    seen = {}

    def fake_tui(session, **kw):
        seen.update(session=session, title=kw.get("title"))
        return 0

    monkeypatch.setattr(qdbg.cli, "_run_tui", fake_tui)
    rc, out, _ = run(capsys, "scan", pair["A"], pair["B"], "--prompts", str(prompt_file), "--workers", "1",
                     "--ubatch", "4", "--gen", "1", "--json", "--open")
    assert rc == 0
    worst = json.loads(out)["prompts"][0]
    s = seen["session"]
    flip = worst["flips"][0]
    assert s.current.name == "result_output" and flip in s.current.positions and s.scope == flip
    assert s.final()["flip_positions"] == [flip]  # the scoped comparison shows the flip
    assert s.prompt == worst["tokens"][:worst["n_tokens"]]


def test_cli_ctrl_c_prints_what_is_done(capsys, monkeypatch, pair, prompt_file):
    import qdbg.cli_scan as cs
    from qdbg.scan.runners import run_inline

    def interrupted(args, config, items):
        yield from run_inline(config, items[:1])
        raise KeyboardInterrupt

    monkeypatch.setattr(cs, "_runner", interrupted)
    rc, out, err = run(capsys, "scan", pair["A"], pair["B"], "--prompts", str(prompt_file), "--json")
    doc = json.loads(out)
    assert rc == 130 and len(doc["prompts"]) == 1 and doc["summary"]["interrupted"] is True
    assert "1 of 3 prompts scanned" in err


def test_cli_bad_input(capsys, pair, tmp_path):
    a, b = pair["A"], pair["B"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    good = tmp_path / "good.txt"
    good.write_text("hi\n")
    cases = [
        (["--prompts", str(tmp_path / "missing.txt")], "no such prompt file"),
        (["--prompts", str(empty)], "no prompts"),
        (["--prompts", str(bad)], "bad.jsonl:2: malformed JSON line"),
        (["--prompts", str(good), "--gen", "-1"], "--gen must be >= 0"),
        (["--prompts", str(good), "--workers", "0"], "--workers must be at least 1"),
    ]
    for extra, msg in cases:
        rc, out, err = run(capsys, "scan", a, b, *extra)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1 and out == "", (extra, err)
    rc, _, err = run(capsys, "scan", a, str(tmp_path / "nope.gguf"), "--prompts", str(good))
    assert rc == 2 and "no such file" in err


def test_cli_unreachable_dask(capsys, pair, tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    import qdbg.scan.runners as runners

    good = tmp_path / "good.txt"
    good.write_text("hi\n")
    monkeypatch.setattr(runners, "DASK_TIMEOUT", "1s")
    rc, out, err = run(capsys, "scan", pair["A"], pair["B"], "--prompts", str(good), "--dask", "tcp://127.0.0.1:9")
    assert rc == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_cli_long_prompt_reported(capsys, pair, tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("zzz\n" + "ab " * 300 + "\n")
    rc, out, err = run(capsys, "scan", pair["A"], pair["B"], "--prompts", str(p), "--workers", "1",
                       "--ctx-size", "16", "--json")
    doc = json.loads(out)
    assert rc == 0
    errs = [q for q in doc["prompts"] if q["error"]]
    assert len(errs) == 1 and errs[0]["index"] == 1 and "more than the context" in errs[0]["error"]
    assert doc["summary"]["n_scanned"] == 1 and doc["summary"]["n_errors"] == 1
