"""ReplaySession: a loaded trace stepped through the Session verbs, with no model file opened."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from qdbg.breakpoints import BreakpointList
from qdbg.errors import UsageError
from qdbg.session import SCOPE_ALL, SCOPE_LAST, Record, Session, numerics_label, parse_scope
from qdbg.trace import load_trace
from qdbg.trace_schema import ModelInfo, Trace

class ReplayModel:
    """Stands in for qdbg.model.Model in a replay: identity and config, no weights or tokenizer."""

    def __init__(self, info: ModelInfo) -> None:
        self.info, self.path, self.config, self.name = info, Path(info.path), info.config, info.name

    def tensor_types(self) -> dict[str, str]:
        return dict(self.info.tensor_types)

    def type_summary(self) -> str:
        return self.info.type_summary()

    def sha256(self) -> str:
        if self.info.sha256 is None:
            raise UsageError(f"the trace did not record the sha256 of {self.path.name}")
        return self.info.sha256

    @property
    def tokenizer(self) -> Any:
        raise UsageError(f"a replay has no tokenizer: {self.path.name} is not opened")

    def weight(self, name: str) -> Any:
        raise UsageError(f"a replay has no weights: {self.path.name} is not opened ('{name}')")


class ReplaySession(Session):
    """A Session over a loaded Trace: the verbs (step, back, next_layer, cont, run_to, run_to_end,
    restart, final, variables) walk the recorded ops; nothing is computed and no model is opened.

    It starts where the saved session was (all recorded ops in history, the saved cursor);
    `restart()` empties the history and stepping hands the ops out again in order. `decode`
    raises UsageError; `set_scope` works when the saved tensors cover the new scope.
    """

    def __init__(self, trace: Trace) -> None:  # no Session.__init__: no models, no engines
        self.trace = trace
        self.models = {lab: ReplayModel(trace.models[lab]) for lab in trace.labels}
        self.labels = list(trace.labels)
        self.prompt = list(trace.prompt)
        self.prompt_text = trace.prompt_text
        self.mode, self.top_k = trace.mode, trace.top_k
        self.pieces: Any = dict(trace.pieces)
        self.breakpoints = BreakpointList.from_json(trace.breakpoints)
        self.engines: dict = {}
        self._scope = trace.scope
        self.restart()
        while self._advance() is not None:
            pass
        self.cursor = trace.cursor

    @classmethod
    def from_trace(cls, trace: Trace) -> ReplaySession:
        return cls(trace)

    def restart(self) -> None:
        """Back to before the first op (breakpoints stay)."""
        self.history: list[Record] = []
        self.cursor = -1
        self.tokens = list(self.prompt)
        self.pending: list[int | None] = []
        self._chunks: list[list[int]] = []
        self.driver = self.trace.driver
        self._gens = None

    @property
    def at_end(self) -> bool:
        return len(self.history) == len(self.trace.records) and self.cursor == len(self.history) - 1

    def numerics_info(self) -> dict[str, Any]:
        return dict(self.trace.numerics)

    def numerics_label(self) -> str:
        return numerics_label(self.numerics_info())

    def numerics_text(self) -> str:
        n = self.trace.numerics
        prof = n.get("profile") or {}
        return f"{n.get('mode', self.mode)}" + (f": {prof['description']}" if prof.get("description") else "")

    def saved_positions(self, rec: Record) -> tuple[int, ...] | None:
        """Token positions covered by rec.values (None: no tensors saved for it)."""
        return self.trace.tensor_positions.get(rec.index)

    def _advance(self) -> Record | None:
        i = len(self.history)
        if i >= len(self.trace.records):
            return None
        src = self.trace.records[i]
        rec = dataclasses.replace(src, values=dict(src.values))
        if self._scope == self.trace.scope:
            rec.stats, rec.pairs, rec.logits = src.stats, src.pairs, src.logits
        else:
            self._measure(rec)
        self.history.append(rec)
        need = max(rec.positions, default=-1) + 1
        if len(self.tokens) < need:
            self.tokens = list(self.trace.tokens[:need])
        return rec

    def _wanted(self, rec: Record, scope: str | int) -> tuple[int, ...]:
        if scope == SCOPE_ALL:
            return rec.positions
        if scope == SCOPE_LAST:
            return rec.positions[-1:]
        return (scope,) if scope in rec.positions else ()

    def _scope_slice(self, rec: Record, x: np.ndarray) -> np.ndarray | None:
        sp = self.saved_positions(rec)
        if "token" not in rec.axes or sp is None:
            return x if "token" not in rec.axes else None
        want = self._wanted(rec, self._scope)
        if not want or not set(want) <= set(sp):
            return None
        return np.take(x, [sp.index(p) for p in want], axis=rec.axes.index("token"))

    def set_scope(self, scope: str | int) -> None:
        """Change the scope; UsageError unless it is the recorded one or the saved tensors cover it."""
        scope = parse_scope(scope)
        if scope != self.trace.scope:
            for r in self.trace.records:
                want, sp = self._wanted(r, scope), self.saved_positions(r)
                if want and (sp is None or len(r.values) != len(self.labels) or not set(want) <= set(sp)):
                    raise UsageError(
                        f"this trace cannot show scope {scope!r}: it was recorded with scope {self.trace.scope!r} "
                        f"and keeps {self.trace.tensors.get('note', 'no tensors')}; op {r.name} (step {r.step}) "
                        f"has tensors for positions {list(sp) if sp else 'none'}")
        Session.set_scope(self, scope)

    def _measure(self, rec: Record) -> None:
        if self._scope == self.trace.scope and rec.index < len(self.trace.records):
            src = self.trace.records[rec.index]
            rec.stats, rec.pairs, rec.logits = src.stats, src.pairs, src.logits
        else:
            Session._measure(self, rec)

    def decode(self, n: int, driver: str = "a", text_tokens: Any = None) -> None:
        """A replay cannot compute new tokens: always UsageError."""
        steps = 1 + max((r.step for r in self.trace.records), default=0)
        raise UsageError(f"a replay cannot decode: the trace holds only the {steps} recorded pass(es) "
                         f"over {len(self.trace.tokens)} tokens; step on to see them, or rerun with the models")


def open_replay(path: str | os.PathLike) -> ReplaySession:
    """Load a trace file and return a ReplaySession positioned where the saved session was."""
    return ReplaySession(load_trace(path))

