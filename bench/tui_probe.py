"""TUI latencies for bench/run.py, through Textual's headless Pilot at 120x40 (one JSON line).

    python bench/tui_probe.py A.gguf B.gguf --tokens 1,2,3 --t0 <parent's time.time()>
    python bench/tui_probe.py --demo --t0 ...       # `qdbg demo`'s pair and prompt (cached or made)

first_screen_s: process start (the parent's clock) to the app mounted with the session attached
(its first screen). Then `--steps` presses of `s`, each after `--read` seconds of "reading" (the
prefetcher computes ahead meanwhile), timed from the key press to the cursor moving: p50/p95/max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


async def probe(a: argparse.Namespace) -> dict:
    from qdbg.session import open_session
    from qdbg.tui import make_app

    if a.demo:
        from qdbg.demo import demo_pair, demo_prompt

        files = demo_pair(progress=lambda m: None)
        s = open_session({"A": str(files["Q4_K_M"]), "B": str(files["Q5_K_M"])}, prompt=demo_prompt())
    else:
        s = open_session({"A": a.models[0], "B": a.models[1]}, [int(t) for t in a.tokens.split(",")])
    app = make_app(s, warm_kernels=True)
    lat = []
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        first = time.time() - a.t0
        for _ in range(a.steps):
            await asyncio.sleep(a.read)
            before = s.cursor
            t = time.perf_counter()
            await pilot.press("s")
            while s.cursor == before and time.perf_counter() - t < 60:
                await pilot.pause(0.002)
            lat.append(time.perf_counter() - t)
            if s.at_end:
                break
    lat.sort()
    return {"first_screen_s": first, "n_steps": len(lat), "p50_s": lat[len(lat) // 2],
            "p95_s": lat[int(0.95 * (len(lat) - 1))], "max_s": lat[-1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--tokens", default="")
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--t0", type=float, default=None)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--read", type=float, default=0.3)
    a = ap.parse_args()
    if a.t0 is None:
        a.t0 = time.time()
    print(json.dumps(asyncio.run(probe(a))))


if __name__ == "__main__":
    main()
