"""qdbg benchmarks: each figure against its goal (issue 10), llama.cpp measured side by side in the same run.

    python bench/run.py                 # everything but the 512-token run; writes BENCHMARKS.md
    python bench/run.py --long          # also the 512-token prompt on the TinyLlama-shaped pair
    python bench/run.py --only smollm2  # one pair (smollm2 | tinyllama), no micro rows

End to end: `qdbg run A B --tokens <14 ids>` (exact mode, compile cache warm) and
bench/llama_ref.py (llama-cpp-python loading and evaluating the same two files) each run as a
child process, alternately, `--repeat` times; wall time is process start to exit (best of the
repeats), CPU time is the child's user+sys, memory the child's peak RSS (ru_maxrss, the whole
process; mmapped weight pages it touched count). The machine is shared, so wall times are noisy:
the CPU-time ratio is given beside the wall-time one.
Model pairs come from bench/models.py (synthetic weights quantized by llama.cpp; cached).
Also: peak RSS on a model twice as deep (must not grow), cold numba compile of a run and of
`qdbg demo` (TUI first screen, and --headless to the end) on an empty cache, session and TUI step
latencies (bench/probe.py; bench/tui.py in a pseudo-terminal; bench/tui_probe.py for the demo's
first screen), A/B concurrency, and the
original micro rows (GGUF open, dequantize, ggml/f32 forward, weight-cache budget).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import models as bench_models  # noqa: E402

TOKENS = [1, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300]
GB = 1 << 30


@dataclasses.dataclass
class Run:
    wall: float
    cpu: float
    rss: int  # bytes
    rc: int
    out: str


def child(cmd: list[str], env: dict[str, str] | None = None) -> Run:
    """Run `cmd`; wall time from spawn to exit, its own CPU time and peak RSS (os.wait4)."""
    with tempfile.TemporaryFile() as out:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{text[-2000:]}")
    return Run(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, p.returncode, text)


def qdbg_cmd(a: Path, b: Path, tokens: list[int], *extra: str) -> list[str]:
    return [sys.executable, "-m", "qdbg", "run", str(a), str(b),
            "--tokens", ",".join(map(str, tokens)), *extra]


def llama_cmd(a: Path, b: Path, tokens: list[int]) -> list[str]:
    return [sys.executable, str(BENCH / "llama_ref.py"), str(a), str(b),
            "--tokens", ",".join(map(str, tokens))]


def best(runs: list[Run]) -> Run:
    return Run(min(r.wall for r in runs), min(r.cpu for r in runs), max(r.rss for r in runs), 0, runs[-1].out)


def side_by_side(a: Path, b: Path, repeat: int) -> tuple[Run, Run]:
    """qdbg run and llama.cpp, alternately (after one warm-up each), best of `repeat`."""
    child(qdbg_cmd(a, b, TOKENS))
    child(llama_cmd(a, b, TOKENS))
    q, l = [], []
    for _ in range(repeat):
        q.append(child(qdbg_cmd(a, b, TOKENS)))
        l.append(child(llama_cmd(a, b, TOKENS)))
    return best(q), best(l)


def probe(what: str, a: Path, b: Path, tokens: list[int]) -> dict:
    r = child([sys.executable, str(BENCH / "probe.py"), what, str(a), str(b),
               "--tokens", ",".join(map(str, tokens)), "--t0", repr(time.time())])
    return json.loads(r.out.strip().splitlines()[-1])


def tui(args: list[str], env: dict[str, str] | None = None) -> dict:
    r = child([sys.executable, str(BENCH / "tui_probe.py"), *args, "--t0", repr(time.time())], env)
    return json.loads(r.out.strip().splitlines()[-1])


def cold_compile(a: Path, b: Path) -> dict:
    """`qdbg run` and `qdbg demo --headless` with an empty cache folder (a fresh install)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "QDBG_CACHE_DIR")}
        env["XDG_CACHE_HOME"] = tmp
        out["run_cold"] = child(qdbg_cmd(a, b, TOKENS), env)
        out["run_warm"] = child(qdbg_cmd(a, b, TOKENS), env)
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CACHE_HOME"] = tmp
        out["demo_tui_cold"] = tui(["--demo", "--steps", "3"], env)
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CACHE_HOME"] = tmp
        out["demo_cold"] = child([sys.executable, "-m", "qdbg", "demo", "--headless"], env)
        out["demo_warm"] = child([sys.executable, "-m", "qdbg", "demo", "--headless"], env)
    return out


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        fl = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
        flags = " (AVX-512)" if "avx512f" in fl else (" (AVX2)" if "avx2" in fl else "")
    except (OSError, IndexError):
        pass
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1 << 20)
    except (OSError, ValueError, IndexError):
        mem = 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import numba
    import numpy as np

    return (f"{cpu}{flags}, {os.cpu_count()} cores, {mem} GiB RAM, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}; "
            f"load average {load:.1f} when the run started (the machine is shared)")


def ok(v: bool) -> str:
    return "met" if v else "**not met**"


def e2e_rows(name: str, q: Run, l: Run) -> list[str]:
    return [
        f"| {name}: `qdbg run` vs llama.cpp, wall | {q.wall:.2f} s | {l.wall:.2f} s | "
        f"{q.wall / l.wall:.2f}x | ≤ 2x | {ok(q.wall <= 2 * l.wall)} |",
        f"| {name}: same, CPU time (user+sys) | {q.cpu:.2f} s | {l.cpu:.2f} s | "
        f"{q.cpu / l.cpu:.2f}x | ≤ 2x | {ok(q.cpu <= 2 * l.cpu)} |",
        f"| {name}: peak RSS | {q.rss / GB:.2f} GB | {l.rss / GB:.2f} GB | {q.rss / l.rss:.2f}x | "
        f"{'≤ 2.5 GB' if name == 'tinyllama' else '—'} | "
        f"{ok(q.rss <= 2.5 * GB) if name == 'tinyllama' else '—'} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--long", action="store_true", help="also the 512-token TinyLlama run")
    ap.add_argument("--only", choices=tuple(bench_models.PAIRS), default=None)
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    names = [args.only] if args.only else ["smollm2", "tinyllama"]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    mach = machine()
    lines = ["# Benchmarks", "",
             f"Generated by `python bench/run.py{' --long' if args.long else ''}` on: {mach}.", "",
             "Model pairs (bench/models.py): synthetic weights of the named shape written by `qdbg synth` "
             "as F32, quantized by llama.cpp's own `llama_model_quantize` to Q4_K_M and Q5_K_M. "
             "`qdbg run` runs exact mode (the default) on 14 tokens with its per-op metrics; llama.cpp is "
             "llama-cpp-python 0.3.36 (default threads: half the cores) loading each file and evaluating "
             "the same 14 tokens (bench/llama_ref.py). Both are whole processes, start to exit, compile "
             "cache warm, best of the repeats, measured alternately in the same run.", "",
             "| figure | qdbg | llama.cpp | ratio | goal | |", "|---|---|---|---|---|---|"]
    bench_models.precompile()
    pairs = {n: bench_models.build_pair(n, log=say) for n in names}
    for n, (a, b) in pairs.items():
        say(f"{n}: qdbg run vs llama.cpp")
        q, l = side_by_side(a, b, args.repeat)
        lines += e2e_rows(n, q, l)
    if "smollm2" in pairs:
        say("deeper model: peak RSS")
        a, b = pairs["smollm2"]
        deep = bench_models.build_pair("smollm2_deep", log=say)
        base = child(qdbg_cmd(a, b, TOKENS)).rss
        dr = child(qdbg_cmd(*deep, TOKENS)).rss
        lines.append(f"| peak RSS of `qdbg run`, SmolLM2 shape with 60 layers vs 30 | {dr / GB:.2f} GB | "
                     f"{base / GB:.2f} GB (30 layers) | {dr / base:.2f}x | does not grow | "
                     f"{ok(dr <= 1.05 * base)} (`qdbg run` without --trace keeps no op values) |")
        eb = probe("engine", a, b, TOKENS)["peak_rss"]
        ed = probe("engine", *deep, TOKENS)["peak_rss"]
        lines.append(f"| peak RSS of the engines alone (weights, no history), 60 layers vs 30 | "
                     f"{ed / GB:.2f} GB | {eb / GB:.2f} GB (30 layers) | {ed / eb:.2f}x | does not grow | "
                     f"{ok(ed <= 1.05 * eb)} |")
    if "tinyllama" in pairs and args.long:
        say("tinyllama: 512-token prompt")
        a, b = pairs["tinyllama"]
        toks = [1] + [(7919 * i) % 31000 + 10 for i in range(511)]
        r = child(qdbg_cmd(a, b, toks))
        lines.append(f"| tinyllama: 512-token prompt, peak RSS (wall {r.wall:.0f} s) | {r.rss / GB:.2f} GB | "
                     f"— | — | ≤ 6 GB | {ok(r.rss <= 6 * GB)} |")
    lines += ["", "| figure | measured | goal | |", "|---|---|---|---|"]
    for n, (a, b) in pairs.items():
        say(f"{n}: session steps")
        st = probe("steps", a, b, TOKENS)
        lines.append(f"| {n}: process start to first op computed (Session, no UI) | {st['first_op_s']:.2f} s | "
                     f"≤ 1 s to first op on screen | {ok(st['first_op_s'] <= 1)} |")
        lines.append(f"| {n}: `Session.step()` p95 / max over {st['n_steps']} ops (no prefetch) | "
                     f"{st['p95_s'] * 1000:.0f} ms / {st['max_s'] * 1000:.0f} ms | ≤ 100 ms p95 | "
                     f"{ok(st['p95_s'] <= 0.1)} |")
        say(f"{n}: TUI in a pseudo-terminal, 120x40 (bench/tui.py)")
        tt = json.loads(child([sys.executable, str(BENCH / "tui.py"), "--pair", n, "--json"]).out
                        .strip().splitlines()[-1])
        lines.append(f"| {n}: TUI, first op on screen after launch (pseudo-terminal, bench/tui.py) | "
                     f"{tt['first_op_s']:.2f} s | ≤ 1 s | {ok(tt['first_op_s'] <= 1)} |")
        lines.append(f"| {n}: TUI `s` key to the op on screen, p50 / p95 / max over {tt['step']['n']} steps "
                     f"0.15 s apart (prefetch on) | {tt['step']['p50_ms']:.0f} / {tt['step']['p95_ms']:.0f} / "
                     f"{tt['step']['max_ms']:.0f} ms | ≤ 100 ms p95 | {ok(tt['step']['p95_ms'] <= 100)} |")
        lines.append(f"| {n}: TUI Esc during run-to-end to 'interrupted' on screen / screen settled | "
                     f"{tt['esc_shown_ms']:.0f} / {tt['esc_ms']:.0f} ms | ≤ 200 ms | "
                     f"{ok(tt['esc_shown_ms'] <= 200)} (shown), {ok(tt['esc_ms'] <= 200)} (settled) |")
        say(f"{n}: lockstep concurrency")
        ls = probe("lockstep", a, b, TOKENS)
        lines.append(f"| {n}: one 14-token pass of A and B, sides sequential → concurrent "
                     f"(`lockstep.Runner`) | {ls['threads_1_s']:.2f} s → {ls['threads_2_s']:.2f} s "
                     f"({ls['threads_1_s'] / ls['threads_2_s']:.2f}x) | A/B concurrent on two cores | "
                     f"{ok(ls['threads_2_s'] < ls['threads_1_s'])} |")
    if "smollm2" in pairs:
        say("cold compile")
        cc = cold_compile(*pairs["smollm2"])
        cost = cc["run_cold"].wall - cc["run_warm"].wall
        lines.append(f"| first-use numba compile of a run (`qdbg run`, empty cache − warm) | {cost:.1f} s "
                     f"({cc['run_cold'].wall:.1f} s cold, {cc['run_warm'].wall:.1f} s warm) | ≤ 30 s | "
                     f"{ok(cost <= 30)} |")
        lines.append(f"| `qdbg demo` TUI on a fresh install: process start to first screen (quantizes the "
                     f"demo pair; kernels compile in the background) | "
                     f"{cc['demo_tui_cold']['first_screen_s']:.1f} s | ≤ 10 s | "
                     f"{ok(cc['demo_tui_cold']['first_screen_s'] <= 10)} |")
        lines.append(f"| `qdbg demo --headless` on a fresh install (quantizes the demo pair, compiles, runs "
                     f"to the end) | {cc['demo_cold'].wall:.1f} s (warm {cc['demo_warm'].wall:.1f} s) | — | — |")
    if not (args.only or args.no_micro):
        say("micro rows")
        import micro

        lines += [""] + micro.rows()
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
