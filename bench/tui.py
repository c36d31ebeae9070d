"""TUI latency as a user sees it: `qdbg tui` run in a pseudo-terminal, keys written to it, the time
until the terminal output shows their effect.

    python bench/tui.py                         # TinyLlama-shaped Q4_K_M/Q5_K_M pair, 120x40
    python bench/tui.py --pair smollm2 --size 80x24 --steps 60 --json

Each figure is measured on the bytes the app writes to its terminal (escape sequences stripped),
not inside the app, so it includes Textual's layout, rendering and output:

- first op on screen: process spawn (with `s` already typed) to the first frame whose header reads
  'op 1 of', until the screen settles (no output for SETTLE seconds; the time of the last byte);
- step: `s` pressed `--steps` times, `--read` seconds apart (a user reading), each from the key
  to the last byte of the frames that show 'op k of'; also `b`/`s` within history (nothing is
  computed, only redrawn);
- Esc: `e` (run to end) over a long prompt (`--esc-tokens`), Esc after a second, to the frame
  that reads 'interrupted' (shown) and to the settled screen. A terminal sends Esc as a lone
  ESC byte, which could begin an escape sequence: Textual's input thread reports it as the Esc key
  only after ESCDELAY (100 ms) without a following byte, so that much is in the figure.

Goals (issue 10): first op ≤ 1 s, step p95 ≤ 100 ms, Esc ≤ 200 ms. The machine is shared: the
figures are noisy; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import models as bench_models  # noqa: E402

TOKENS = [1, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300]
SETTLE = 0.08
"""Seconds without output after which a frame is taken as complete."""
ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
OP = re.compile(r"\bop (\d+) of")


class Term:
    """A child process on a pseudo-terminal of a given size; its output as plain text with times."""

    def __init__(self, cmd: list[str], cols: int, rows: int, typed: bytes = b"") -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                                     start_new_session=True)
        os.close(slave)
        self.fd = master
        if typed:
            os.write(self.fd, typed)
        self.text = ""          # all output so far, escape sequences removed
        self.last = self.t0     # when the last byte arrived
        self.shown = self.t0    # when what `wait` waited for arrived
        self._raw = b""

    def _read(self, timeout: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not r:
            return False
        try:
            data = os.read(self.fd, 1 << 16)
        except OSError:
            return False
        if not data:
            return False
        self.last = time.perf_counter()
        self._raw += data
        cut = self._raw.rfind(b"\x1b")   # keep an escape sequence that may be split across reads
        if cut >= 0 and len(self._raw) - cut < 32 and not ANSI.match(self._raw, cut):
            done, self._raw = self._raw[:cut], self._raw[cut:]
        else:
            done, self._raw = self._raw, b""
        self.text += ANSI.sub(b"", done).decode(errors="replace")
        return True

    def press(self, key: bytes) -> tuple[float, int]:
        """Write `key`; (when, where the output stood)."""
        at = len(self.text)
        os.write(self.fd, key)
        return time.perf_counter(), at

    def wait(self, pattern: re.Pattern | str, since: int, timeout: float = 30.0) -> re.Match:
        """Read until `pattern` occurs in the output after offset `since`, then until it settles."""
        pat = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        end = time.perf_counter() + timeout
        while True:
            m = pat.search(self.text, since)
            if m:
                self.shown = self.last   # when the output that matched arrived
                break
            if time.perf_counter() > end:
                raise SystemExit(f"timed out waiting for {pat.pattern!r}; screen tail: {self.text[-400:]!r}")
            self._read(0.05)
        self.settle()
        return m

    def settle(self, quiet: float = SETTLE, limit: float = 2.0) -> None:
        end = time.perf_counter() + limit
        while time.perf_counter() < end and self._read(quiet):
            pass

    def close(self) -> None:
        try:
            os.write(self.fd, b"q")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)


def pctl(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def tui_cmd(a: Path, b: Path, tokens: list[int]) -> list[str]:
    return [sys.executable, "-m", "qdbg", "tui", str(a), str(b), "--tokens", ",".join(map(str, tokens))]


def step_to(term: Term, key: bytes, want: int) -> float:
    """Press `key`, wait for the header's 'op `want` of'; seconds to the settled screen."""
    t, at = term.press(key)
    term.wait(re.compile(rf"\bop {want} of"), at)
    return term.last - t


def measure(a: Path, b: Path, cols: int, rows: int, n_steps: int, read: float, esc_tokens: int) -> dict:
    out: dict = {"size": f"{cols}x{rows}", "read_s": read}
    term = Term(tui_cmd(a, b, TOKENS), cols, rows, typed=b"s")
    try:
        term.wait(re.compile(r"\bop 1 of"), 0, timeout=60)
        out["first_op_s"] = term.last - term.t0
        term.settle(0.3)
        lat = []
        for k in range(2, n_steps + 2):
            time.sleep(read)
            lat.append(step_to(term, b"s", k))
        out["step"] = {"n": len(lat), "p50_ms": pctl(lat, 0.5) * 1e3, "p95_ms": pctl(lat, 0.95) * 1e3,
                       "max_ms": max(lat) * 1e3}
        hist, k = [], n_steps + 1
        for i in range(40):   # within history: back and forth, nothing to compute
            time.sleep(read)
            k += -1 if i % 2 == 0 else 1
            hist.append(step_to(term, b"b" if i % 2 == 0 else b"s", k))
        out["history_step"] = {"n": len(hist), "p50_ms": pctl(hist, 0.5) * 1e3,
                               "p95_ms": pctl(hist, 0.95) * 1e3, "max_ms": max(hist) * 1e3}
    finally:
        term.close()
    long = [1] + [(7919 * i) % 31000 + 10 for i in range(esc_tokens - 1)]
    term = Term(tui_cmd(a, b, long), cols, rows)
    try:
        term.wait("op 0 of", 0, timeout=60)
        term.settle(0.5)
        t, at = term.press(b"e")
        term.wait("run to end", at)
        time.sleep(1.0)
        t, at = term.press(b"\x1b")
        term.wait(re.compile(r"interrupted|end of run"), at)
        out["esc_ms"] = (term.last - t) * 1e3
        out["esc_shown_ms"] = (term.shown - t) * 1e3
        out["esc_stopped"] = "interrupted" in term.text[at:]
    finally:
        term.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", choices=tuple(bench_models.PAIRS), default="tinyllama")
    ap.add_argument("--size", default="120x40")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--read", type=float, default=0.15, help="seconds between key presses")
    ap.add_argument("--esc-tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bench_models.precompile()
    cols, rows = (int(v) for v in args.size.lower().split("x"))
    a, b = bench_models.build_pair(args.pair, log=lambda m: print(m, file=sys.stderr))
    r = measure(a, b, cols, rows, args.steps, args.read, args.esc_tokens)
    r["pair"], r["load"] = args.pair, os.getloadavg()[0]
    if args.json:
        print(json.dumps(r))
        return
    st, hs = r["step"], r["history_step"]
    print(f"{args.pair} TUI at {r['size']} (load average {r['load']:.1f}; keys {args.read:.2f} s apart):")
    print(f"  first op on screen after launch: {r['first_op_s']:.2f} s   (goal ≤ 1 s)")
    print(f"  step (s), {st['n']} ops: p50 {st['p50_ms']:.0f} ms, p95 {st['p95_ms']:.0f} ms, "
          f"max {st['max_ms']:.0f} ms   (goal p95 ≤ 100 ms)")
    print(f"  step within history (b/s), {hs['n']}: p50 {hs['p50_ms']:.0f} ms, p95 {hs['p95_ms']:.0f} ms, "
          f"max {hs['max_ms']:.0f} ms")
    print(f"  Esc during run to end ({args.esc_tokens}-token prompt) to 'interrupted' on screen: "
          f"{r['esc_shown_ms']:.0f} ms, settled {r['esc_ms']:.0f} ms{'' if r['esc_stopped'] else ' (the run had ended)'}"
          f"   (goal ≤ 200 ms; Textual takes a lone Esc byte as the Esc key after 100 ms, ESCDELAY)")


if __name__ == "__main__":
    main()
