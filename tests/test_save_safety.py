"""Saving never destroys what it is pointed at (issue 13), for every save qdbg makes.

Each saver (report -o, run --trace, logits --save-logits, quantize, synth, the TUI's w and r) is
pointed at: a new name under several umasks, an existing file with its own mode, a symlink, a
chain of symlinks, a dangling symlink, a FIFO, a character device (a pty, and a symlink to one as
/dev/stdout is), a directory and a socket. Everything lives in tmp_path; nothing touches /dev
except the pty's own slave.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import select
import socket
import stat
import sys
import tempfile
import threading
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from qdbg.cli import main
from qdbg.errors import QdbgError, UsageError
from qdbg.util import atomic_write, check_output, open_output, write_text

TOKENS = "1,5,9"


# --- the savers ----------------------------------------------------------------------------

@dataclass
class Saver:
    id: str
    filename: str  # the name the saver writes in its folder (synth chooses its own)
    run: Callable[[Path], int]  # save to this path; 0, or 2 with one line on stderr
    check: Callable[[bytes, Path], None]  # assert the bytes are a whole output of this kind


def _check_report(data: bytes, scratch: Path) -> None:
    text = data.decode("utf-8")
    assert text.startswith("#") and "## Findings" in text


def _check_trace(data: bytes, scratch: Path) -> None:
    from qdbg.trace import load_trace

    p = scratch / "check.qdbg"
    p.write_bytes(data)
    assert load_trace(p).tokens == [1, 5, 9]


def _check_npy(data: bytes, scratch: Path) -> None:
    arr = np.load(io.BytesIO(data))
    assert arr.dtype == np.float32 and arr.shape[0] == 3


def _check_gguf(data: bytes, scratch: Path) -> None:
    from qdbg.gguf_file import GGUFFile

    p = scratch / "check.gguf"
    p.write_bytes(data)
    with GGUFFile(p) as g:
        assert "token_embd.weight" in g.tensors


def _tui(kind: str, session) -> Callable[[Path], int]:
    """The app's worker calls write_file and shows one_line(error); the same, as an exit status."""
    from qdbg.tui.actions import one_line, write_file

    def run(path: Path) -> int:
        try:
            write_file(kind, session, Path(path))
        except QdbgError as e:
            print(f"qdbg: error: {one_line(e)}", file=sys.stderr)
            return 2
        return 0

    return run


@pytest.fixture(scope="module")
def inputs(synth_model, tmp_path_factory):
    from qdbg.session import open_session

    a, b, q8 = (str(synth_model("llama", ft)) for ft in ("Q4_K_M", "Q5_K_M", "Q8_0"))
    trace = tmp_path_factory.mktemp("inputs") / "t.qdbg"
    assert main(["run", a, b, "--tokens", TOKENS, "--trace", str(trace)]) == 0
    s = open_session({"A": a, "B": b}, [1, 5, 9])
    s.run_to_end()
    return {"a": a, "b": b, "q8": q8, "trace": str(trace), "session": s}


# id -> (the name it writes, argv with {t} the target and {dir} its folder, checker)
CLI_SAVERS = {
    "report -o": ("out.md", ["report", "{trace}", "-o", "{t}"], _check_report),
    "run --trace": ("out.qdbg", ["run", "{a}", "{b}", "--tokens", TOKENS, "--trace", "{t}"], _check_trace),
    "logits --save-logits": ("out.npy", ["logits", "{q8}", "--tokens", TOKENS, "--save-logits", "{t}"], _check_npy),
    "quantize": ("out.gguf", ["quantize", "{q8}", "{t}", "Q4_0"], _check_gguf),
    "synth": ("synth-llama-Q8_0.gguf", ["synth", "--out", "{dir}", "--types", "Q8_0", "--n-layer", "1"], _check_gguf),
}
TUI_SAVERS = {"tui w": ("out.qdbg", "trace", _check_trace), "tui r": ("out.md", "report", _check_report)}
SAVER_IDS = [*CLI_SAVERS, *TUI_SAVERS]


def make_saver(sid: str, inp: dict) -> Saver:
    if sid in TUI_SAVERS:
        name, kind, check = TUI_SAVERS[sid]
        return Saver(sid, name, _tui(kind, inp["session"]), check)
    name, argv, check = CLI_SAVERS[sid]

    def run(t: Path) -> int:
        fill = {**inp, "t": str(t), "dir": str(Path(t).parent)}
        return main([a.format(**fill) for a in argv])

    return Saver(sid, name, run, check)


@pytest.fixture(params=SAVER_IDS)
def saver(request, inputs) -> Saver:
    return make_saver(request.param, inputs)


@pytest.fixture
def scratch(tmp_path) -> Path:
    d = tmp_path / "scratch"
    d.mkdir()
    return d


@pytest.fixture
def umask():
    """Set the process umask for one test; restored afterwards."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _no_temp_files(*dirs: Path) -> None:
    for d in dirs:
        assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp")], d


def _one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qdbg: error:") and needle in err, err
    assert "Traceback" not in err


# --- regular files: mode ---------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_mode_open_would_give(saver, tmp_path, scratch, umask, mask):
    umask(mask)
    target = tmp_path / saver.filename
    assert saver.run(target) == 0
    assert stat.S_ISREG(os.lstat(target).st_mode)
    assert _mode(target) == 0o666 & ~mask
    saver.check(target.read_bytes(), scratch)
    _no_temp_files(tmp_path)


def test_existing_file_keeps_its_mode(saver, tmp_path, scratch, umask):
    umask(0o077)
    target = tmp_path / saver.filename
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    assert saver.run(target) == 0
    assert _mode(target) == 0o640
    saver.check(target.read_bytes(), scratch)
    _no_temp_files(tmp_path)


# --- symlinks ----------------------------------------------------------------------------------

def test_symlink_stays_a_link_and_its_target_is_replaced(saver, tmp_path, scratch):
    store = tmp_path / "store"
    store.mkdir()
    real = store / "real"
    real.write_bytes(b"old")
    os.chmod(real, 0o600)
    link = tmp_path / saver.filename
    os.symlink(os.path.join("store", "real"), link)  # relative, resolved from the link's folder
    assert saver.run(link) == 0
    assert os.path.islink(link) and os.readlink(link) == os.path.join("store", "real")
    assert _mode(real) == 0o600
    saver.check(real.read_bytes(), scratch)
    _no_temp_files(tmp_path, store)


def test_symlink_chain_resolves_to_the_last_file(saver, tmp_path, scratch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    real = tmp_path / "b" / "real"
    real.write_bytes(b"old")
    os.symlink(real, tmp_path / "a" / "hop2")
    os.symlink(os.path.join("a", "hop2"), tmp_path / "hop1")
    link = tmp_path / saver.filename
    os.symlink("hop1", link)
    assert saver.run(link) == 0
    assert os.readlink(link) == "hop1" and os.readlink(tmp_path / "hop1") == os.path.join("a", "hop2")
    assert os.path.islink(tmp_path / "a" / "hop2")
    saver.check(real.read_bytes(), scratch)
    _no_temp_files(tmp_path, tmp_path / "a", tmp_path / "b")


def test_dangling_symlink_creates_its_target(saver, tmp_path, scratch, umask):
    umask(0o027)
    link = tmp_path / saver.filename
    os.symlink("missing.bin", link)
    assert saver.run(link) == 0
    assert os.path.islink(link) and os.readlink(link) == "missing.bin"
    real = tmp_path / "missing.bin"
    assert stat.S_ISREG(os.lstat(real).st_mode) and _mode(real) == 0o640
    saver.check(real.read_bytes(), scratch)


def test_symlink_loop_is_one_line_exit_2(capsys, inputs, tmp_path):
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    assert main(["report", inputs["trace"], "-o", str(tmp_path / "loop1")]) == 2
    _one_line_error(capsys, "symlink loop")
    assert os.readlink(tmp_path / "loop1") == "loop2"


# --- FIFOs, character devices, /dev/stdout ------------------------------------------------------

@contextlib.contextmanager
def fifo_reader(path: Path):
    """Read everything written to the FIFO at `path`, in a thread; never blocks the test forever."""
    got: dict[str, bytes] = {}

    def read() -> None:
        with open(path, "rb") as f:
            got["data"] = f.read()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        yield got
    finally:
        t.join(timeout=10)
        if t.is_alive():  # the save never opened the FIFO: release the reader
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            t.join(timeout=5)


@contextlib.contextmanager
def pty_reader():
    """A pty in raw mode (bytes pass unchanged); yields (slave path, bytes read from the master)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    got = bytearray()
    done = threading.Event()

    def read() -> None:
        while True:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    got.extend(os.read(master, 1 << 16))
                except OSError:
                    return
            elif done.is_set():
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        yield Path(os.ttyname(slave)), got
    finally:
        done.set()
        t.join(timeout=10)
        os.close(master)
        os.close(slave)


@pytest.fixture
def spool(tmp_path, monkeypatch) -> Path:
    """Where in-place saves spool their content; checked empty afterwards."""
    d = tmp_path / "spool"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_fifo_is_written_into_and_stays_a_fifo(saver, tmp_path, scratch, spool):
    fifo = tmp_path / saver.filename
    os.mkfifo(fifo)
    with fifo_reader(fifo) as got:
        rc = saver.run(fifo)
    assert rc == 0
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    saver.check(got["data"], scratch)
    assert list(spool.iterdir()) == []
    _no_temp_files(tmp_path)


def test_character_device_is_written_into(saver, tmp_path, scratch, spool):
    with pty_reader() as (dev, got):
        link = tmp_path / saver.filename
        os.symlink(dev, link)  # as /dev/stdout links to the terminal
        assert saver.run(link) == 0
        assert os.path.islink(link) and stat.S_ISCHR(os.stat(dev).st_mode)
    saver.check(bytes(got), scratch)
    assert list(spool.iterdir()) == []


def test_pty_path_itself(inputs, scratch):
    with pty_reader() as (dev, got):
        assert main(["report", inputs["trace"], "-o", str(dev)]) == 0
    _check_report(bytes(got), scratch)


def test_null_device_stand_in(inputs, tmp_path):
    """The reported accident: `report -o /dev/null` as root. A null device node made in tmp_path."""
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.close(os.open(null, os.O_WRONLY))
    except (PermissionError, OSError) as e:  # no CAP_MKNOD, or tmp mounted nodev
        pytest.skip(f"cannot make a device node here: {e}")
    before = os.lstat(null)
    assert main(["report", inputs["trace"], "-o", str(null)]) == 0
    after = os.lstat(null)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert after.st_mode == before.st_mode


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_dev_stdout_to_a_pipe(inputs, tmp_path, scratch):
    """/dev/stdout is a link to /proc/self/fd/1; when stdout is a pipe that is a link to no path."""
    r, w = os.pipe()
    link = tmp_path / "stdout"
    os.symlink(f"/proc/self/fd/{w}", link)
    got = bytearray()

    def read() -> None:
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        assert main(["report", inputs["trace"], "-o", str(link)]) == 0
    finally:
        os.close(w)
        t.join(timeout=10)
        os.close(r)
    assert os.path.islink(link)
    _check_report(bytes(got), scratch)


# --- refused targets ---------------------------------------------------------------------------

def test_directory_is_one_line_exit_2(saver, tmp_path, capsys):
    d = tmp_path / saver.filename
    d.mkdir()
    (d / "keep").write_text("x")
    assert saver.run(d) == 2
    _one_line_error(capsys, "is a directory")
    assert d.is_dir() and (d / "keep").read_text() == "x"


def test_symlink_to_a_directory_is_refused(inputs, tmp_path, capsys):
    (tmp_path / "d").mkdir()
    os.symlink("d", tmp_path / "link")
    assert main(["report", inputs["trace"], "-o", str(tmp_path / "link")]) == 2
    _one_line_error(capsys, "is a directory")
    assert os.path.islink(tmp_path / "link") and list((tmp_path / "d").iterdir()) == []


def test_socket_is_one_line_exit_2(saver, tmp_path, capsys, monkeypatch):
    """open() cannot write to a socket; qdbg says so in one line and leaves the socket alone."""
    monkeypatch.chdir(tmp_path)  # AF_UNIX paths are short; bind relative to here
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(saver.filename)
        assert saver.run(tmp_path / saver.filename) == 2
        _one_line_error(capsys, "is a socket")
        assert stat.S_ISSOCK(os.lstat(saver.filename).st_mode)


# --- '-' -------------------------------------------------------------------------------------

def test_dash_is_stdout_for_the_report(inputs, tmp_path, capsys, monkeypatch, scratch):
    monkeypatch.chdir(tmp_path)
    assert main(["report", inputs["trace"], "-o", "-"]) == 0
    out, err = capsys.readouterr()
    _check_report(out.encode(), scratch)
    assert err == "" and not (tmp_path / "-").exists()
    assert main(["report", inputs["trace"]]) == 0  # no -o: stdout too
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("sid", ["run --trace", "logits --save-logits", "quantize", "tui w", "tui r"])
def test_dash_is_refused_for_binary_outputs_and_in_the_tui(sid, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert make_saver(sid, inputs).run(Path("-")) == 2
    _one_line_error(capsys, "'-'")
    assert not (tmp_path / "-").exists()


def test_open_output_for_text_commands(tmp_path, capsys):
    """The helper a text command (e.g. a future `scan --csv FILE`) writes through."""
    with open_output("-") as f:
        f.write("a,b\r\n1,2\r\n")
    assert capsys.readouterr().out == "a,b\r\n1,2\r\n"
    out = tmp_path / "scan.csv"
    with open_output(out) as f:
        f.write("a,b\r\n")
    assert out.read_bytes() == b"a,b\r\n"
    with pytest.raises(RuntimeError), open_output(out) as f:  # an error in the block writes nothing
        f.write("half")
        raise RuntimeError("boom")
    assert out.read_bytes() == b"a,b\r\n"
    with pytest.raises(UsageError, match="is a directory"), open_output(tmp_path):
        raise AssertionError("the directory is refused before the block runs")


# --- failures leave the old file whole -----------------------------------------------------------

def test_failed_save_leaves_the_target_and_no_temp_file(tmp_path):
    real = tmp_path / "real.md"
    real.write_text("old")
    link = tmp_path / "link.md"
    os.symlink("real.md", link)

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    for target in (real, link):
        with pytest.raises(RuntimeError):
            atomic_write(target, fail)
    assert real.read_text() == "old" and os.path.islink(link)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.md", "real.md"]


def test_os_failure_is_one_qdbg_error_naming_the_file(tmp_path):
    with pytest.raises(QdbgError, match="nope/x.md: cannot write") as e:
        write_text(tmp_path / "nope" / "x.md", "x")
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOENT
    with pytest.raises(UsageError, match="'-'"):
        check_output("-")
    check_output("-", text=True)
