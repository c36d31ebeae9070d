"""In-process measurements for bench/run.py, each run as its own process and printed as one JSON line.

    python bench/probe.py steps A.gguf B.gguf --tokens 1,2,3     # session step latencies (no UI)
    python bench/probe.py lockstep A.gguf B.gguf --tokens 1,2,3  # one pass, sides sequential vs concurrent

`steps`: seconds from process start (as the parent's clock gives it, `t0` argument) to the first
op computed, then the latency of every `Session.step()` to the end of the prompt (what the TUI waits
for on `s` without prefetch). `lockstep`: a whole forward pass of both engines, one op of each in
turn in this thread, then each side in its own qdbg.engine.lockstep.Runner as sessions run them
(best of `--repeat`).
"""

from __future__ import annotations

import argparse
import json
import time


def steps(a: argparse.Namespace) -> dict:
    from qdbg.session import open_session

    toks = [int(t) for t in a.tokens.split(",")]
    s = open_session({"A": a.models[0], "B": a.models[1]}, toks)
    lat = []
    first = None
    while True:
        t = time.perf_counter()
        st = s.step()
        lat.append(time.perf_counter() - t)
        if first is None:
            first = time.time() - a.t0
        if st.reason == "end" or s.at_end:
            break
    lat.sort()
    return {"first_op_s": first, "n_steps": len(lat), "p50_s": lat[len(lat) // 2],
            "p95_s": lat[int(0.95 * (len(lat) - 1))], "max_s": lat[-1]}


def lockstep(a: argparse.Namespace) -> dict:
    from qdbg.engine import lockstep as ls
    from qdbg.engine.forward import Engine
    from qdbg.model import Model

    toks = [int(t) for t in a.tokens.split(",")]
    models = [Model(p) for p in a.models]

    def one_pass(concurrent: bool) -> float:
        gens = {lab: Engine(m).forward(toks) for lab, m in zip("AB", models)}
        t = time.perf_counter()
        if concurrent:
            runners = [ls.Runner(g, lab) for lab, g in gens.items()]
            while all([r.get() is not None for r in runners]):
                pass
        else:
            while all([next(g, None) is not None for g in gens.values()]):
                pass
        return time.perf_counter() - t

    one_pass(False)  # warm: kernels loaded, file pages read
    return {f"threads_{n}_s": min(one_pass(n == 2) for _ in range(a.repeat)) for n in (1, 2)}


def engine(a: argparse.Namespace) -> dict:
    """Both models' logits through bare engines (no session, no history): the weights' share."""
    import resource

    from qdbg.engine.forward import Engine
    from qdbg.model import Model

    toks = [int(t) for t in a.tokens.split(",")]
    for p in a.models:
        Engine(Model(p)).logits(toks)
    return {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("steps", "lockstep", "engine"))
    ap.add_argument("models", nargs=2)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--t0", type=float, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    if a.t0 is None:
        a.t0 = time.time()
    print(json.dumps({"steps": steps, "lockstep": lockstep, "engine": engine}[a.what](a)))


if __name__ == "__main__":
    main()
