"""Replay: a loaded trace as an OpSource (TraceSource), walked by the same Debugger as a live run;
no model file is opened and nothing is computed unless a new scope asks for re-measuring."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from qdbg.breakpoints import BreakpointList
from qdbg.catalogue import Catalogue, OpInfo
from qdbg.debugger import Debugger
from qdbg.errors import UsageError
from qdbg.records import Record
from qdbg.scope import Scope
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


class TraceSource:
    """An OpSource over a Trace: hands the recorded ops out in order with their recorded metrics
    (re-measured from the saved tensors when the debugger's scope differs from the recorded one)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.models = {lab: ReplayModel(trace.models[lab]) for lab in trace.labels}
        self.labels = list(trace.labels)
        self.prompt = list(trace.prompt)
        self.prompt_text = trace.prompt_text
        self.mode = trace.mode
        self.pieces: Any = dict(trace.pieces)
        # the recorded ops are all a replay can reach: targets are checked against them
        seen = {r.name: OpInfo(r.name, r.kind, r.layer, r.weight) for r in trace.records}
        self.catalogue: Catalogue | None = Catalogue(seen.values())
        self.reset()

    def reset(self) -> None:
        self._next = 0
        self.tokens = list(self.prompt)
        self.pending: list[int | None] = []
        self.driver = self.trace.driver

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self.trace.records)

    def next_op(self, index: int) -> Record | None:
        if self._next >= len(self.trace.records):
            return None
        src = self.trace.records[self._next]
        self._next += 1
        rec = dataclasses.replace(src, index=index, values=dict(src.values), interventions=list(src.interventions))
        need = max(rec.positions, default=-1) + 1
        if len(self.tokens) < need:
            self.tokens = list(self.trace.tokens[:need])
        return rec

    def held_positions(self, rec: Record) -> tuple[int, ...] | None:
        """Token positions covered by rec.values (None: no tensors saved for it)."""
        return self.trace.tensor_positions.get(rec.index)

    def recorded(self, rec: Record, scope: Scope) -> bool:
        if scope != self.trace.scope or rec.index >= len(self.trace.records):
            return False
        src = self.trace.records[rec.index]
        rec.stats, rec.pairs, rec.logits = src.stats, src.pairs, src.logits
        return True

    def check_scope(self, scope: Scope) -> None:
        """UsageError unless `scope` is the recorded one or the saved tensors cover it."""
        if scope == self.trace.scope:
            return
        for r in self.trace.records:
            want, sp = scope.positions(r.positions), self.held_positions(r)
            if "token" in r.axes and want and (sp is None or len(r.values) != len(self.labels)
                                               or not set(want) <= set(sp)):
                raise UsageError(
                    f"this trace cannot show scope {scope.value!r}: it was recorded with scope "
                    f"{self.trace.scope!r} and keeps {self.trace.tensors.get('note', 'no tensors')}; op {r.name} "
                    f"(step {r.step}) has tensors for positions {list(sp) if sp else 'none'}")

    def decode(self, n: int, driver: str = "a", text_tokens: Sequence[int] | None = None) -> None:
        """A replay cannot compute new tokens: always UsageError."""
        steps = 1 + max((r.step for r in self.trace.records), default=0)
        raise UsageError(f"a replay cannot decode: the trace holds only the {steps} recorded pass(es) "
                         f"over {len(self.trace.tokens)} tokens; step on to see them, or rerun with the models")

    def numerics_info(self) -> dict[str, Any]:
        return dict(self.trace.numerics)

    def numerics_text(self) -> str:
        n = self.trace.numerics
        prof = n.get("profile") or {}
        return f"{n.get('mode', self.mode)}" + (f": {prof['description']}" if prof.get("description") else "")

    def interventions(self) -> list[dict[str, Any]]:
        return list(self.trace.interventions)


class ReplaySession(Debugger):
    """The Debugger over a TraceSource: it starts where the saved session was (every recorded op
    in history, the saved cursor and breakpoints); `restart()` empties the history and stepping
    hands the ops out again. `decode` raises UsageError; `set_scope` works when the saved tensors
    cover the new scope."""

    def __init__(self, trace: Trace) -> None:
        super().__init__(TraceSource(trace), scope=trace.scope, top_k=trace.top_k,
                         breakpoints=BreakpointList.from_json(trace.breakpoints))
        self.trace = trace
        while self._advance() is not None:
            pass
        self.cursor = trace.cursor

    @classmethod
    def from_trace(cls, trace: Trace) -> ReplaySession:
        return cls(trace)

    def saved_positions(self, rec: Record) -> tuple[int, ...] | None:
        """Token positions covered by rec.values (None: no tensors saved for it)."""
        return self.source.held_positions(rec)


def open_replay(path: str | os.PathLike) -> ReplaySession:
    """Load a trace file and return a ReplaySession positioned where the saved session was."""
    return ReplaySession(load_trace(path))
