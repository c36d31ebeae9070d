"""Breakpoints: per-session objects in the spirit of CPython's bdb (cond, enabled, temporary, hits,
ignore_count), holding conditions written in the language of qdbg.expr.

A breakpoint fires on the edge by default: where its condition is true and was false at the op
before (the caller passes that op's variables); `every=True` fires at every op where it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from qdbg.errors import ExpressionError, QdbgError, TraceError
from qdbg.expr import Node, evaluate, parse, quote, unparse
from qdbg.expr import (  # re-exported: callers of breakpoints also speak the language
    ALIASES, BOOL, MAX_DEPTH, NUM, STR, VARIABLES, And, Bool, Compare, Not, Num, Or, Str, Var,
    variables_from,
)

__all__ = [
    "Breakpoint", "BreakpointList", "Node", "evaluate", "parse", "quote", "unparse", "variables_from",
    "ALIASES", "BOOL", "MAX_DEPTH", "NUM", "STR", "VARIABLES", "And", "Bool", "Compare", "Not", "Num",
    "Or", "Str", "Var",
]
# ---- breakpoints -----------------------------------------------------------------------------

@dataclass
class Breakpoint:
    """One breakpoint: fires when enabled and `cond` is true, after skipping `ignore_count` hits."""

    id: int
    expr: str
    cond: Node = field(repr=False)
    enabled: bool = True
    temporary: bool = False
    hits: int = 0
    ignore_count: int = 0
    every: bool = False

    def __str__(self) -> str:
        flags = ("" if self.enabled else " [disabled]") + (" [temporary]" if self.temporary else "") \
            + (" [every op]" if self.every else "")
        ign = f" ignore={self.ignore_count}" if self.ignore_count else ""
        return f"#{self.id} {unparse(self.cond)}{flags} hits={self.hits}{ign}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "expr": self.expr, "enabled": self.enabled,
                "temporary": self.temporary, "hits": self.hits, "ignore_count": self.ignore_count, "every": self.every}


class BreakpointList:
    """A session's breakpoints. Ids start at 1 and are never reused."""

    def __init__(self) -> None:
        self._bps: dict[int, Breakpoint] = {}
        self._next = 1

    def __iter__(self) -> Iterator[Breakpoint]:
        return iter(list(self._bps.values()))

    def __len__(self) -> int:
        return len(self._bps)

    def __contains__(self, bp_id: object) -> bool:
        return bp_id in self._bps

    def add(self, expr: str, temporary: bool = False, *, enabled: bool = True,
            ignore_count: int = 0, every: bool = False) -> Breakpoint:
        """Parse `expr` (ExpressionError if malformed) and add it as a new breakpoint; `every`:
        fire at every op where it holds, not only where it becomes true."""
        bp = Breakpoint(self._next, expr, parse(expr), enabled=enabled, temporary=temporary,
                        ignore_count=max(0, int(ignore_count)), every=bool(every))
        self._bps[bp.id] = bp
        self._next += 1
        return bp

    def add_op(self, name: str, temporary: bool = False) -> Breakpoint:
        """Break at the op named exactly `name` (quoted safely): `op == "<name>"`."""
        return self.add(f"op == {quote(str(name))}", temporary)

    def get(self, bp_id: int) -> Breakpoint:
        try:
            return self._bps[int(bp_id)]
        except (KeyError, TypeError, ValueError):
            raise QdbgError(f"no breakpoint {bp_id!r}; have {sorted(self._bps)}") from None

    def remove(self, bp_id: int) -> Breakpoint:
        return self._bps.pop(self.get(bp_id).id)

    def clear(self) -> None:
        self._bps.clear()

    def enable(self, bp_id: int) -> None:
        self.get(bp_id).enabled = True

    def disable(self, bp_id: int) -> None:
        self.get(bp_id).enabled = False

    def toggle(self, bp_id: int) -> bool:
        """Flip enabled; return the new state."""
        bp = self.get(bp_id)
        bp.enabled = not bp.enabled
        return bp.enabled

    def ignore(self, bp_id: int, count: int) -> None:
        """Let the next `count` true conditions pass without firing."""
        self.get(bp_id).ignore_count = max(0, int(count))

    def check(self, variables: Mapping[str, Any], before: Mapping[str, Any] | None = None) -> list[Breakpoint]:
        """Evaluate enabled breakpoints against `variables`; return those that fire, by id.

        `before` are the variables of the op before (None at the start of a pass): a breakpoint
        without `every` whose condition held there too does not fire (edge, not level). A firing
        condition counts a hit; if ignore_count > 0 it is decremented and the breakpoint does not
        fire. Temporary breakpoints are removed once they fire.
        """
        fired = []
        for bp in list(self._bps.values()):
            if not bp.enabled or not evaluate(bp.cond, variables):
                continue
            if not bp.every and before is not None and evaluate(bp.cond, before):
                continue
            bp.hits += 1
            if bp.ignore_count > 0:
                bp.ignore_count -= 1
                continue
            fired.append(bp)
            if bp.temporary:
                del self._bps[bp.id]
        return fired

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "next_id": self._next, "breakpoints": [b.to_json() for b in self._bps.values()]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BreakpointList:
        """Rebuild from `to_json` output; TraceError if it is malformed."""
        if not isinstance(data, Mapping) or data.get("version") != 1:
            raise TraceError(f"breakpoints: expected a dict with version 1, got {str(data)[:80]!r}")
        out = cls()
        items = data.get("breakpoints")
        if not isinstance(items, list):
            raise TraceError("breakpoints: 'breakpoints' is not a list")
        types = {"id": int, "expr": str, "enabled": bool, "temporary": bool, "hits": int, "ignore_count": int}
        for d in items:
            if not isinstance(d, Mapping) or any(
                    not isinstance(d.get(k), t) or (t is int and isinstance(d.get(k), bool))
                    for k, t in types.items()):
                raise TraceError(f"breakpoints: malformed entry {str(d)[:80]!r}")
            if d["id"] < 1 or d["id"] in out._bps or d["hits"] < 0 or d["ignore_count"] < 0:
                raise TraceError(f"breakpoints: bad id/hits/ignore_count in {str(d)[:80]!r}")
            try:
                cond = parse(d["expr"])
            except ExpressionError as e:
                raise TraceError(f"breakpoints: breakpoint {d['id']}: {e}") from None
            every = d.get("every", False)  # version-1 traces lack it
            if not isinstance(every, bool):
                raise TraceError(f"breakpoints: 'every' is not a boolean in {str(d)[:80]!r}")
            out._bps[d["id"]] = Breakpoint(d["id"], d["expr"], cond, d["enabled"], d["temporary"],
                                           d["hits"], d["ignore_count"], every)
        nxt = data.get("next_id", 1)
        if not isinstance(nxt, int) or isinstance(nxt, bool):
            raise TraceError(f"breakpoints: next_id {nxt!r} is not an int")
        out._next = max([nxt, *(i + 1 for i in out._bps)])
        return out

