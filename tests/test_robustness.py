"""Bad numbers and bad moments: NaN/Inf through the whole stack, a save killed midway, --debug."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdbg.cli import main
from qdbg.errors import QdbgError
from qdbg.model import Model
from qdbg.session import Session


def broken_f16(synth_model, tmp_path: Path) -> Path:
    """A 'broken F16 model': one ffn_down row holds inf (an overflowed conversion), so ffn_out-0
    gets inf/nan in channel 0 and the residual stream carries them onward."""
    from gguf import GGUFReader

    src = Path(synth_model("llama", "F16"))
    buf = bytearray(src.read_bytes())
    r = GGUFReader(src)
    t = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight")
    start = int(t.data_offset)
    row = np.full(t.data.shape[-1], np.inf, np.float16)
    buf[start:start + row.nbytes] = row.tobytes()
    out = tmp_path / "broken-F16.gguf"
    out.write_bytes(bytes(buf))
    return out


def test_nan_inf_are_counted_stop_at_nan_and_never_crash(synth_model, tmp_path):
    from qdbg.report import render_report
    from qdbg.trace import load_trace, save_trace

    a = Model(broken_f16(synth_model, tmp_path))
    b = Model(synth_model("llama", "F16"))
    s = Session({"A": a, "B": b}, [1, 40, 41, 300, 12])
    s.set_scope("all")
    s.breakpoints.add("nan")
    st_ = s.cont()
    assert st_.reason == "breakpoint"
    rec = st_.record
    stats = rec.stats["A"]
    assert stats["inf_count"] + stats["nan_count"] > 0
    assert s.run_to_end().reason == "end"
    s.final()  # logits comparison with non-finite rows does not raise
    text = render_report(s)
    assert "NaN" in text or "Inf" in text
    p = tmp_path / "nan.qdbg"
    save_trace(s, p)
    assert render_report(load_trace(p)) == text


def test_killed_save_leaves_previous_trace_intact(synth_model, tmp_path):
    """A child process saving a trace is SIGKILLed midway: the old file is still a valid trace."""
    a, b = synth_model("llama", "Q4_K_M"), synth_model("llama", "Q5_K_M")
    target, marker = tmp_path / "t.qdbg", tmp_path / "saving"
    script = textwrap.dedent(f"""
        import time
        import numpy.lib.format as fmt
        from qdbg.session import open_session
        from qdbg.trace import save_trace
        s = open_session({{"A": {str(a)!r}, "B": {str(b)!r}}}, [1, 5, 9])
        s.run_to_end()
        save_trace(s, {str(target)!r})
        orig = fmt.write_array
        def slow(*args, **kw):
            open({str(marker)!r}, "w").close()
            time.sleep(0.2)
            return orig(*args, **kw)
        fmt.write_array = slow
        s.decode(1, "a"); s.run_to_end()
        save_trace(s, {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the child never reached the second save"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from qdbg.trace import load_trace

    t = load_trace(target)
    assert t.tokens == [1, 5, 9]  # the first save, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("t.qdbg", "saving")]
    assert all(n.startswith(".t.qdbg.") for n in leftovers)  # at most the dead writer's temp file


def test_debug_flag_shows_traceback(capsys, tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope")
    assert main(["inspect", str(bad)]) == 2
    with pytest.raises(QdbgError):
        main(["--debug", "inspect", str(bad)])


def test_unreadable_file_is_one_line(capsys, monkeypatch, tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert main(["inspect", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "permission denied" in err


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_prompt_tokenizes_or_fails_cleanly(text):

    tok = _tokenizer()
    try:
        ids = tok.encode(text)
    except QdbgError:
        return
    assert all(0 <= i < tok.n_vocab for i in ids)
    tok.decode(ids)
    tok.pieces(ids)


_TOK = None


def _tokenizer():
    global _TOK
    if _TOK is None:
        from qdbg.gguf_file import GGUFFile
        from qdbg.tokenizer import Tokenizer

        path = Path(__file__).parent / "golden" / "tokenizer" / "smollm2.gguf"
        _TOK = Tokenizer.from_gguf(GGUFFile(path).metadata)
    return _TOK
