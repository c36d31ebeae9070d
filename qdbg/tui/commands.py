"""QdbgCommands: a command-palette provider listing every qdbg action with its current key."""

from __future__ import annotations

from functools import partial
from typing import Any, Iterator

from textual.command import DiscoveryHit, Hit, Hits, Provider


class QdbgCommands(Provider):
    """One command per app binding that has an id (so remapped keys show as remapped)."""

    def _commands(self) -> Iterator[tuple[str, Any, str]]:
        app = self.app
        keys: dict[str, str] = {}
        for key, ab in self.screen.active_bindings.items():
            if ab.binding.id:
                keys.setdefault(ab.binding.id, app.get_key_display(ab.binding))
        for b in getattr(app, "COMMAND_BINDINGS", ()):
            key = keys.get(b.id, b.key.split(",")[0])
            # the palette names actions in full (the footer's labels are abbreviated to fit)
            yield (palette_name(b), partial(app.run_action, b.action), f"key {key} · {b.tooltip or b.id}")

    async def discover(self) -> Hits:
        for name, run, help_text in self._commands():
            yield DiscoveryHit(name, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, run, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), run, help=help_text)


def palette_name(binding) -> str:
    """An action's full name for the palette and help: its binding id in words ('next layer')."""
    return (binding.id or binding.action).replace("_", " ")
