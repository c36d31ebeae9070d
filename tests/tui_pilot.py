"""Shared Pilot helpers for the TUI tests: drive an app at a fixed size, settle, press, answer."""

from __future__ import annotations

import asyncio

from textual.widgets import Input

SIZE = (120, 40)


def drive(app, script, size=SIZE):
    """Run `await script(pilot)` inside app.run_test (after the app settled) and return its result."""
    async def main():
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            return await script(pilot)
    return asyncio.run(main())


async def settle(pilot) -> None:
    """Let workers finish and their messages land."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def press(pilot, *keys: str) -> None:
    """Press each key and settle after it."""
    for k in keys:
        await pilot.press(k)
        await settle(pilot)


async def type_text(pilot, text: str) -> None:
    await pilot.press(*[{" ": "space"}.get(ch, ch) for ch in text])


async def answer(pilot, text: str) -> None:
    """Fill the open prompt's input and press Enter."""
    pilot.app.screen.query_one(Input).value = text
    await press(pilot, "enter")
