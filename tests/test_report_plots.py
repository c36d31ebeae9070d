"""Report images: written beside the Markdown with matplotlib (valid, deterministic PNGs), and
without it, or to standard output, the report says how to get them."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

import qdbg.report.plots as qplots
from qdbg.cli import main
from qdbg.report import render_report, write_report


@pytest.fixture(scope="module")
def trace(abr_trace):
    return abr_trace(1)


def check_png(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG whose every chunk's CRC holds and whose image data inflates."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i, chunks, idat = 8, [], b""
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        assert struct.unpack(">I", data[i + 8 + n:i + 12 + n])[0] == zlib.crc32(kind + body)
        chunks.append(kind)
        idat += body if kind == b"IDAT" else b""
        i += 12 + n
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    w, h = struct.unpack(">II", data[16:24])
    assert len(zlib.decompress(idat)) > w * h  # one filter byte per row plus the pixels
    return w, h


def test_series_without_matplotlib(trace):
    s = qplots.layer_series(trace, 1)
    assert s.labels == ["embd", "0", "1", "norm", "logits"]
    assert set(s.lines) >= {"A~B", "A~R", "B~R"} and list(s.faint) == ["A~B pass 0"]
    l_out1 = next(r for r in trace.records if r.step == 1 and r.name == "l_out-1")
    assert s.lines["A~R"][2] == l_out1.pairs["A~R"].rel_rms
    rec = next(r for r in trace.records if r.step == 1 and r.logits)
    bars = qplots.topk_bars(trace, rec, 0)
    a_top = [t["id"] for t in rec.logits["A~B"].positions[0].a.top]
    assert [b.split("» ")[1] for b in bars.tokens[:len(a_top)]] == [str(i) for i in a_top]
    assert bars.logits["A"][0] == rec.logits["A~B"].positions[0].a.top[0]["logit"]
    assert set(bars.logits) == {"A", "B", "R"}


def test_images_written_beside_the_markdown(trace, tmp_path):
    pytest.importorskip("matplotlib")
    seen: list[Path] = []
    md = write_report(trace, tmp_path / "study.md", on_image=seen.append)
    text = md.read_text(encoding="utf-8")
    layers, logits = tmp_path / "study-layers.png", tmp_path / "study-logits.png"
    assert seen == [layers, logits]
    assert "![rel_rms along the layers (A~B, A~R, B~R, noise)](study-layers.png)" in text
    assert "![top-k logits of A and B](study-logits.png)" in text
    assert text.index("### Plots") < text.index("## Error through the layers")  # in the summary
    w, h = check_png(layers.read_bytes())
    assert w >= 400 and h >= 300
    check_png(logits.read_bytes())
    first = layers.read_bytes(), logits.read_bytes(), text
    write_report(trace, tmp_path / "study.md")
    assert (layers.read_bytes(), logits.read_bytes(), md.read_text(encoding="utf-8")) == first  # deterministic
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study-layers.png", "study-logits.png", "study.md"]


def test_symlink_gets_images_beside_its_target(trace, tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.md"
    os.symlink(tmp_path / "real" / "r.md", link)
    write_report(trace, link)
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["r-layers.png", "r-logits.png", "r.md"]
    assert "](r-layers.png)" in link.read_text(encoding="utf-8")


def test_without_matplotlib_the_report_says_how(trace, tmp_path, monkeypatch):
    monkeypatch.setattr(qplots, "available", lambda: False)
    text = write_report(trace, tmp_path / "r.md").read_text(encoding="utf-8")
    assert "No images: matplotlib is not installed: `pip install 'qdbg[plots]'`, then write the report again." in text
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_stdout_has_no_images(trace, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_report(trace, "-")
    out = capsys.readouterr().out
    assert out == render_report(trace)
    assert "No images: the report went to standard output; write it to a file (`-o FILE.md`) to get the images." in out
    assert list(tmp_path.iterdir()) == []


def test_cli_report_writes_and_names_the_images(synth_model, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a, b = str(synth_model("llama", "Q4_K_M")), str(synth_model("llama", "Q5_K_M"))
    t = tmp_path / "t.qdbg"
    assert main(["run", a, b, "--tokens", "1,17,42", "--trace", str(t)]) == 0
    capsys.readouterr()
    assert main(["report", str(t), "-o", str(tmp_path / "out.md")]) == 0
    err = capsys.readouterr().err
    for name in ("out-layers.png", "out-logits.png", "out.md"):
        assert (tmp_path / name).is_file() and f"wrote {tmp_path / name}" in err
    check_png((tmp_path / "out-logits.png").read_bytes())
