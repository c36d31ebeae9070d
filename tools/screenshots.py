"""Render the README screenshots of the TUI as SVG: the main screen, a breakpoint hit, the
logits pane after a top-1 flip, attribution at an op, and the same op patched from B, at 120x40.

    python tools/screenshots.py                 # the demo pair (qdbg demo's Q4_K_M vs Q5_K_M)
    python tools/screenshots.py --synthetic     # the seeded synthetic llama pair of the tests

Writes screenshots/main.svg, breakpoint.svg, flip.svg, attribution.svg and patched.svg (or --out DIR).
The images show file names only, never directories, and no clock.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np

from qdbg.session import Session, open_session
from qdbg.tui import make_app

SIZE = (120, 40)
FIX_OP = "ffn_gate-0"  # the op whose weight `qdbg bisect` names for the demo pair (README example)
SYNTH_PROMPT = [1, 40, 41, 300, 12]
SYNTH_FLIPS = ([1, 40, 41, 300, 6], [1, 40, 41, 300, 5], [1, 40, 41, 300, 10])


def synthetic_pair() -> dict[str, str]:
    """The tests' synthetic llama as Q4_K_M and Q5_K_M, written to a temporary directory."""
    from qdbg.synth import SynthCache, SynthSpec, write_gguf

    out = Path(tempfile.mkdtemp(prefix="qdbg-shots-"))
    spec = SynthSpec(arch="llama")
    cache = SynthCache(spec)
    return {lab: str(write_gguf(spec, out / f"llama-{ft}.gguf", ft, cache=cache))
            for lab, ft in (("A", "Q4_K_M"), ("B", "Q5_K_M"))}


def demo_pair() -> tuple[dict[str, str], str]:
    """The demo's quantized pair (made on first use) and its prompt."""
    from qdbg.demo import demo_pair as pair, demo_prompt

    files = pair(progress=lambda m: print(m, file=sys.stderr))
    return {"A": str(files["Q4_K_M"]), "B": str(files["Q5_K_M"])}, demo_prompt()


def threshold(paths: dict[str, str], tokens: list[int]) -> float:
    """A rel_rms that the matmuls past layer 0 cross about a quarter of the time (two digits)."""
    s = open_session(paths, tokens)
    s.run_to_end()
    rel = [r.pair["rel_rms"] for r in s.history if r.kind == "matmul" and (r.layer or 0) >= 1]
    return float(f"{np.percentile(rel, 75):.2g}")


async def _settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def _press(pilot, *keys: str) -> None:
    for k in keys:
        await pilot.press(k)
        await _settle(pilot)


def shoot(session: Session, path: Path, script: Callable[..., Awaitable[None]]) -> None:
    """Run the app over `session`, play `script(pilot)`, save the screen as `path`."""
    app = make_app(session)

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await _settle(pilot)
            await script(pilot)
            for inp in app.screen.query("Input"):
                inp.cursor_blink = False
            await pilot.pause()
            app.save_screenshot(filename=path.name, path=str(path.parent))

    asyncio.run(main())
    print(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", action="store_true", help="use the tests' synthetic pair, not the demo")
    ap.add_argument("--out", default="screenshots", help="output directory (default: screenshots)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.synthetic:
        paths, tokens, flips = synthetic_pair(), SYNTH_PROMPT, list(SYNTH_FLIPS)
    else:
        paths, prompt = demo_pair()
        tokens = open_session(paths, prompt=prompt).prompt
        flips = [tokens]
    mid = open_session(paths, tokens).models["A"].config.n_layer // 2

    async def main_screen(pilot) -> None:
        await _press(pilot, "e", "slash")
        pilot.app.screen.query_one("Input").value = f"ffn_out-{mid}"
        await _press(pilot, "enter", "t")

    shoot(open_session(paths, tokens), out / "main.svg", main_screen)

    cond = f'kind == "matmul" and layer >= 1 and rel_rms > {threshold(paths, tokens):g}'

    async def breakpoint_hit(pilot) -> None:
        await _press(pilot, "a")
        pilot.app.query_one("#bp-input").value = cond
        await _press(pilot, "enter", "escape", "c")

    shoot(open_session(paths, tokens), out / "breakpoint.svg", breakpoint_hit)

    for toks in flips:
        s = open_session(paths, toks)
        s.run_to_end()
        if s.final()["positions"][-1]["flip"]:
            break
    else:
        print("warning: no prompt tried flips the top-1; flip.svg shows agreement", file=sys.stderr)

    async def at_end(pilot) -> None:
        await _settle(pilot)

    shoot(s, out / "flip.svg", at_end)

    # the worked example: where the divergence is born, then the same op patched from B
    target = FIX_OP if not args.synthetic else "ffn_gate-0"

    async def attribution(pilot) -> None:
        await _press(pilot, "e", "slash")
        pilot.app.screen.query_one("Input").value = target
        await _press(pilot, "enter")

    shoot(open_session(paths, list(s.prompt)), out / "attribution.svg", attribution)

    async def patched(pilot) -> None:
        await attribution(pilot)
        await _press(pilot, "p")

    shoot(open_session(paths, list(s.prompt)), out / "patched.svg", patched)
    return 0


if __name__ == "__main__":
    sys.exit(main())
