"""Scope: which token positions of an op the metrics cover — the last one (the position that picks
the next token), all of them, or one absolute position. The one place that turns a scope into
positions and row indices; the debugger, the trace writer, the report and the TUI all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from qdbg.errors import UsageError

LAST, ALL = "last", "all"


@dataclass(frozen=True)
class Scope:
    """'last', 'all' or an absolute position (int >= 0). Compares equal to its JSON value, so
    `scope == "all"` and `scope == 3` read naturally."""

    value: str | int = LAST

    @classmethod
    def parse(cls, x: Any) -> Scope:
        """A Scope from 'last', 'all', a position as int or text, or a Scope; UsageError otherwise."""
        if isinstance(x, Scope):
            return x
        if x in (LAST, ALL):
            return cls(x)
        if isinstance(x, bool):
            raise UsageError(f"scope must be 'last', 'all' or a position, got {x!r}")
        try:
            pos = int(x)
        except (TypeError, ValueError):
            raise UsageError(f"scope must be 'last', 'all' or a position, got {x!r}") from None
        if pos < 0:
            raise UsageError(f"scope position must be >= 0, got {pos}")
        return cls(pos)

    def to_json(self) -> str | int:
        return self.value

    def __str__(self) -> str:
        return str(self.value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Scope):
            return self.value == other.value
        if isinstance(other, (str, int)) and not isinstance(other, bool):
            return self.value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)

    @property
    def position(self) -> int | None:
        """The absolute position of a position scope, else None."""
        return self.value if isinstance(self.value, int) else None

    # -- positions ----------------------------------------------------------------------------
    def positions(self, positions: Sequence[int]) -> tuple[int, ...]:
        """The absolute positions this scope keeps of an op over `positions` (empty: it misses)."""
        if self.value == ALL:
            return tuple(positions)
        if self.value == LAST:
            return tuple(positions[-1:])
        return (self.value,) if self.value in positions else ()

    def token(self, positions: Sequence[int]) -> int | None:
        """The position the breakpoint variable `token` names: the scope's, else the op's last."""
        if isinstance(self.value, int):
            return self.value
        return positions[-1] if positions else None

    def absolute(self, positions: Sequence[int], row: int) -> int | None:
        """Absolute position of row `row` of a value cut to this scope (None if out of range)."""
        kept = self.positions(positions)
        return kept[row] if 0 <= row < len(kept) else None

    def take(self, x: np.ndarray, axes: Sequence[str], positions: Sequence[int],
             held: Sequence[int] | None = None) -> np.ndarray | None:
        """`x` cut to the scope along its 'token' axis; `held` are the positions x's rows hold
        (default: all of `positions`). None when x does not hold every position the scope wants."""
        if "token" not in axes:
            return x
        want = self.positions(positions)
        have = tuple(positions) if held is None else tuple(held)
        if not want or not set(want) <= set(have):
            return None
        if want == have:
            return x
        return np.take(x, [have.index(p) for p in want], axis=list(axes).index("token"))


def parse_scope(scope: Any) -> str | int:
    """'last', 'all', or a token position >= 0 (as int or text); UsageError otherwise."""
    return Scope.parse(scope).value
