"""Debugger: walks an OpSource with a cursor, a history, verbs, breakpoints and a scope (bdb-style).

Verbs only set the stop state (`_set_stop`) and call `_run`; `stop_here(rec)` says whether the
verb's target is reached and `break_here(rec)` which breakpoints fire. Nothing here knows a UI.
Going back never recomputes: the history keeps every op handed out; stepping forward past its
end asks the source for the next op and measures it under the current scope. The history's
values stay under a byte budget (qdbg.history: past it the oldest are spilled to disk and read
back on access).

Breakpoints fire on the *edge*: when a condition becomes true at an op after being false at the
op before it in the same pass (a condition that holds for 490 ops stops once); a breakpoint added
with `every=True` fires at every op where it holds.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable, Sequence

import numpy as np

from qdbg import metrics
from qdbg.breakpoints import Breakpoint, BreakpointList, variables_from
from qdbg.errors import UsageError
from qdbg.history import HistoryStore
from qdbg.records import AUX_CROSS, AUX_SHADOW, AUX_SPLIT, LogitsComparison, PairMetrics, Record, SideStats
from qdbg.scope import Scope
from qdbg.source import OpSource, numerics_label

PAIRS = (("A", "B"), ("A", "R"), ("B", "R"))


class Stop:
    """Why a run verb stopped: 'step', 'breakpoint', 'target', 'end', 'interrupted'."""

    def __init__(self, reason: str, record: Record | None, breakpoints: list[Breakpoint] | None = None) -> None:
        self.reason, self.record, self.breakpoints = reason, record, list(breakpoints or [])

    def __repr__(self) -> str:
        return f"Stop({self.reason!r}, {None if self.record is None else self.record.name!r})"


def centred(x: np.ndarray) -> np.ndarray:
    """Logits rows minus their mean over the vocabulary: a uniform shift, which softmax ignores,
    leaves them unchanged. Non-finite rows keep their NaN/Inf."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        fin = np.where(np.isfinite(x), x, 0.0)
        n = np.maximum(np.isfinite(x).sum(axis=-1, keepdims=True), 1)
        return x - fin.sum(axis=-1, keepdims=True) / n


def _finite(*xs: np.ndarray) -> list[np.ndarray]:
    """The arrays flattened to float64, kept where all of them are finite."""
    fs = [np.asarray(x, dtype=np.float64).reshape(-1) for x in xs]
    ok = np.logical_and.reduce([np.isfinite(f) for f in fs])
    return fs if ok.all() else [f[ok] for f in fs]


def _ratio(num: float, den: float) -> float:
    return (0.0 if num == 0 else math.inf) if den == 0 else num / den


def split_rel(a: np.ndarray, b: np.ndarray, cross: np.ndarray) -> tuple[float, float]:
    """(local, inherited) relative to ||b||: ||cross - b|| and ||a - cross|| where cross is A's op
    on B's inputs (qdbg.attribution), over the elements finite in all three. The arrays add up:
    (cross - b) + (a - cross) = a - b."""
    fa, fb, fc = _finite(a, b, cross)
    ref = metrics._norm(fb)
    return _ratio(metrics._norm(fc - fb), ref), _ratio(metrics._norm(fa - fc), ref)


def rel_to(x: np.ndarray, ref: np.ndarray) -> float:
    """||x - ref|| / ||ref|| over the elements finite in both."""
    fx, fr = _finite(x, ref)
    return _ratio(metrics._norm(fx - fr), metrics._norm(fr))


class Debugger:
    """Cursor, history, verbs, breakpoints and scope over one OpSource."""

    def __init__(self, source: OpSource, *, scope: Any = "last", top_k: int = 10,
                 breakpoints: BreakpointList | None = None, history_bytes: int | None = None,
                 keep_values: bool = True) -> None:
        self.source = source
        self.store = HistoryStore(history_bytes)
        """The history's arrays under a byte budget ($QDBG_HISTORY_BYTES; qdbg.history): past it
        the oldest are spilled to a private file and read back on access."""
        self.keep_values = keep_values
        """False: each op's values are let go once measured (records keep their metrics; reading
        a value is an error). For a run to the end that saves no trace: memory stays flat."""
        self.top_k = top_k
        self.breakpoints = breakpoints if breakpoints is not None else BreakpointList()
        self._scope = Scope.parse(scope)
        self.history: list[Record] = []
        self.cursor = -1

    # -- the source's facts -------------------------------------------------------------------
    @property
    def models(self) -> dict[str, Any]:
        return self.source.models

    @property
    def labels(self) -> list[str]:
        return self.source.labels

    @property
    def prompt(self) -> list[int]:
        return self.source.prompt

    @property
    def tokens(self) -> list[int]:
        return self.source.tokens

    @property
    def pending(self) -> list[int | None]:
        return self.source.pending

    @property
    def driver(self) -> str:
        return self.source.driver

    @property
    def mode(self) -> str:
        return self.source.mode

    @property
    def pieces(self) -> Any:
        return self.source.pieces

    @property
    def prompt_text(self) -> str | None:
        return self.source.prompt_text

    @prompt_text.setter
    def prompt_text(self, text: str | None) -> None:
        self.source.prompt_text = text

    def numerics_info(self) -> dict[str, Any]:
        return self.source.numerics_info()

    def numerics_label(self) -> str:
        """A few words for headers: 'exact (llama.cpp 0.3.36 x86-64 AVX2)', 'f32'."""
        return numerics_label(self.numerics_info())

    def numerics_text(self) -> str:
        return self.source.numerics_text()

    def interventions(self) -> list[dict[str, Any]]:
        return self.source.interventions()

    # -- state --------------------------------------------------------------------------------
    @property
    def current(self) -> Record | None:
        return self.history[self.cursor] if self.cursor >= 0 else None

    @property
    def at_end(self) -> bool:
        return self.source.exhausted and self.cursor == len(self.history) - 1

    @property
    def scope(self) -> Scope:
        return self._scope

    def set_scope(self, scope: Any) -> None:
        """'last' (default), 'all', or an absolute token position; re-measures the history."""
        sc = Scope.parse(scope)
        self.source.check_scope(sc)
        self._scope = sc
        for rec in self.history:
            self._measure(rec)

    def restart(self) -> None:
        """Back to before the first op: the source starts over, the history empties (breakpoints stay)."""
        self.source.reset()
        self.history = []
        self.store.clear()
        self.cursor = -1

    def close(self) -> None:
        """Remove the history's spill folder (also done at exit); the records stay readable."""
        self.store.close()

    # -- interventions (a live source only) ----------------------------------------------------
    def _live(self) -> Any:
        if not hasattr(self.source, "set_interventions"):
            raise UsageError("a replay cannot patch or resync: it only shows what was recorded")
        return self.source

    @property
    def patches(self) -> list[Any]:
        """The weight patches in force (qdbg.live.Patch), in the order given."""
        return list(getattr(self.source, "patches", []))

    @property
    def resyncs(self) -> list[Any]:
        return list(getattr(self.source, "resyncs", []))

    def add_patch(self, patch: Any) -> Any:
        """Add a weight patch (a qdbg.live.Patch or 'GLOB=SIDE') and start over, keeping the
        breakpoints and the decode steps queued so far. An equal patch already in force is kept once."""
        from qdbg.live import Patch

        p = patch if isinstance(patch, Patch) else Patch.parse(patch)
        src = self._live()
        self._reintervene([*[q for q in src.patches if q != p], p], src.resyncs)
        return p

    def remove_patch(self, i: int) -> Any:
        """Remove the i-th patch (0-based, as `patches` lists them) and start over."""
        src = self._live()
        if not 0 <= i < len(src.patches):
            raise UsageError(f"there is no patch {i + 1} ({len(src.patches)} in force)")
        p = src.patches[i]
        self._reintervene([q for j, q in enumerate(src.patches) if j != i], src.resyncs)
        return p

    def set_interventions(self, patches: Sequence[Any], resyncs: Sequence[Any]) -> None:
        """Replace the patches and resyncs and start over (breakpoints and queued decodes kept)."""
        self._live()
        self._reintervene(list(patches), list(resyncs))

    def _reintervene(self, patches: list[Any], resyncs: list[Any]) -> None:
        src = self.source
        queued, driver = len(src.tokens) - len(src.prompt) + len(src.pending), src.driver
        forced = [t for t in src.pending if t is not None]
        text = src.tokens[len(src.prompt):] + forced if driver == "text" else None
        src.set_interventions(patches, resyncs)  # checks first: on error nothing changed
        self.restart()
        if queued:
            self.decode(queued, driver, text)

    def decode(self, n: int, driver: str = "a", text_tokens: Sequence[int] | None = None) -> None:
        """Queue n more tokens (driver 'a', 'b' or 'text'); see the source."""
        self.source.decode(n, driver, text_tokens)

    # -- measuring ----------------------------------------------------------------------------
    def scoped(self, rec: Record, side: str, values: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
        """One side's value of `rec` (or of `values`, e.g. rec.aux) cut to the current scope (None
        if the scope misses it)."""
        v = (rec.values if values is None else values).get(side)
        return None if v is None else self._scope.take(v, rec.axes, rec.positions, self.source.held_positions(rec))

    def _inputs_of(self, rec: Record) -> dict[str, Record]:
        """The records `rec` read, found by walking back through its own pass."""
        want, found = set(rec.inputs), {}
        i = min(rec.index, len(self.history)) - 1
        while want and i >= 0 and self.history[i].step == rec.step:
            r = self.history[i]
            if r.name in want:
                found[r.name] = r
                want.discard(r.name)
            i -= 1
        return found

    def _measure(self, rec: Record) -> None:
        if self.source.recorded(rec, self._scope):
            return
        vals = {lab: self.scoped(rec, lab) for lab in rec.values}
        rec.stats, rec.pairs, rec.logits = {}, {}, None
        if not vals or any(v is None for v in vals.values()):
            return
        rec.stats = {lab: SideStats.from_json(metrics.tensor_stats(v)) for lab, v in vals.items()}
        prev = self._inputs_of(rec)
        logits = rec.name == "result_output"
        cmp = {lab: centred(v) for lab, v in vals.items()} if logits else vals
        for x, y in PAIRS:
            if x in vals and y in vals:
                key = f"{x}~{y}"
                ins = [prev[n].pairs[key].rel_rms for n in rec.inputs if n in prev and key in prev[n].pairs]
                ins = [v for v in ins if v is not None and not math.isnan(v)]
                pm = PairMetrics.from_json(metrics.pair_metrics(
                    cmp[x], cmp[y], axes_names=rec.axes, input_rel_rms=max(ins) if ins else None))
                pm.centred = True if logits else None
                rec.pairs[key] = pm
        if logits:
            rec.logits = {}
            pos = self._scope.positions(rec.positions)
            for x, y in PAIRS:
                if x in vals and y in vals:
                    lc = metrics.logits_compare(vals[x], vals[y], k=self.top_k, pieces=self.pieces)
                    # rows are the scope's rows: report absolute token positions
                    lc["flip_positions"] = [pos[i] for i in lc["flip_positions"]]
                    for p in lc["positions"]:
                        p["pos"] = pos[p["pos"]]
                    rec.logits[f"{x}~{y}"] = LogitsComparison.from_json(lc)
        self._measure_aux(rec, vals, cmp)

    def _measure_aux(self, rec: Record, vals: dict[str, np.ndarray], cmp: dict[str, np.ndarray]) -> None:
        """Attribution (local, inherited) and noise of A vs B from the values the live source
        computed beside the sides (Record.aux), under the current scope; at the logits, each
        position's noise floor of A's top-2 margin."""
        ab = rec.pairs.get("A~B")
        if ab is None or not rec.aux:
            return
        logits = rec.name == "result_output"
        aux = {k: self.scoped(rec, k, rec.aux) for k in rec.aux}
        a, b = cmp["A"], cmp["B"]
        cross = aux.get(AUX_CROSS)
        if cross is not None:
            c = centred(cross) if logits else cross
            ab.local, ab.inherited = split_rel(a, b, c)
        shadow = aux.get(AUX_SHADOW)
        if shadow is not None:
            ab.noise = rel_to(a, centred(shadow) if logits else shadow)
        if logits and rec.logits and "A~B" in rec.logits:
            shadows = [aux[k] for k in (AUX_SHADOW, AUX_SPLIT) if aux.get(k) is not None]
            if shadows:
                from qdbg.noise import margin_floor

                lc = rec.logits["A~B"]
                floor = margin_floor(vals["A"], shadows)
                for i, p in enumerate(lc.positions):
                    p.noise_floor = float(floor[i])
                labels = getattr(self.source, "shadow_labels", None)
                if labels is None and hasattr(self.source, "trace") and rec.index < len(self.source.trace.records):
                    was = (self.source.trace.records[rec.index].logits or {}).get("A~B")  # a replay: as recorded
                    labels = None if was is None else was.noise_shadows
                lc.noise_shadows = list(labels or [])[:len(shadows)]

    def variables(self, rec: Record) -> dict[str, Any]:
        """The breakpoint variables of a record (A vs B)."""
        return variables_from(op=rec.name, kind=rec.kind, layer=rec.layer,
                              token=self._scope.token(rec.positions) if rec.positions else None,
                              pair=rec.pairs.get("A~B"), logits=(rec.logits or {}).get("A~B"),
                              weight=rec.weight)

    # -- the stop machinery (bdb's stop_here / break_here) --------------------------------------
    def _set_stop(self, until: Callable[[Record], bool] | None, check_breaks: bool) -> None:
        self._until, self._check_breaks = until, check_breaks

    def stop_here(self, rec: Record) -> bool:
        """True when the running verb's target is reached at `rec`."""
        return self._until is not None and self._until(rec)

    def break_here(self, rec: Record) -> list[Breakpoint]:
        """The breakpoints that fire at `rec`: conditions true here and (unless `every`) false at the
        op before it in the same pass."""
        if not self._check_breaks or not len(self.breakpoints):
            return []
        prev = self.history[rec.index - 1] if rec.index > 0 else None
        before = self.variables(prev) if prev is not None and prev.step == rec.step else None
        return self.breakpoints.check(self.variables(rec), before)

    def _advance(self) -> Record | None:
        rec = self.source.next_op(len(self.history))
        if rec is None:
            return None
        self.history.append(rec)
        self._measure(rec)
        if self.keep_values:
            self.store.adopt(rec)   # measured in memory; past the budget the oldest values go to disk
        else:
            self.store.drop(rec)
        return rec

    def step(self) -> Stop:
        """One op forward (computing it if the cursor is at the frontier)."""
        if self.cursor < len(self.history) - 1:
            self.cursor += 1
            return Stop("step", self.current)
        rec = self._advance()
        if rec is None:
            return Stop("end", self.current)
        self.cursor = rec.index
        return Stop("step", rec)

    def back(self) -> Stop:
        """One op back through history (nothing is recomputed)."""
        if self.cursor > 0:
            self.cursor -= 1
        return Stop("step", self.current)

    def _run(self, should_stop: Callable[[], bool] | None = None) -> Stop:
        while True:
            if should_stop is not None and should_stop():
                return Stop("interrupted", self.current)
            st = self.step()
            if st.reason == "end":
                return st
            rec = st.record
            assert rec is not None
            hit = self.break_here(rec)
            if hit:
                return Stop("breakpoint", rec, hit)
            if self.stop_here(rec):
                return Stop("target", rec)

    def cont(self, should_stop: Callable[[], bool] | None = None) -> Stop:
        """Run until a breakpoint fires or nothing is left (`should_stop()` polled between ops)."""
        self._set_stop(None, True)
        return self._run(should_stop)

    def run_to_end(self, should_stop: Callable[[], bool] | None = None) -> Stop:
        """Run to the end, ignoring breakpoints."""
        self._set_stop(None, False)
        return self._run(should_stop)

    def next_layer(self, should_stop: Callable[[], bool] | None = None) -> Stop:
        """Run to the first op of the next layer (or the final norm after the last layer)."""
        cur = self.current
        here = (cur.step, cur.layer if cur.layer is not None else -1) if cur else (0, -2)

        def until(rec: Record) -> bool:
            lay = rec.layer if rec.layer is not None else (10**9 if rec.name.startswith("result") else -1)
            return (rec.step, lay) > here and rec.name != "inp_scaled"

        self._set_stop(until, True)
        return self._run(should_stop)

    def run_to(self, target: str | int, should_stop: Callable[[], bool] | None = None) -> Stop:
        """Run to the next op matching `target`: an exact name, a glob (`ffn_*-5`), a GGUF tensor
        name (`blk.7.ffn_down.weight`: the op reading it) or a layer number. A target no op of a
        pass matches is a UsageError before anything runs."""
        if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()):
            layer = int(target)
            n_layer = self.models["A"].config.n_layer
            if not 0 <= layer < n_layer:
                raise UsageError(f"layer {layer} does not exist (0..{n_layer - 1})")
            self._set_stop(lambda r: r.layer == layer, False)
            return self._run(should_stop)
        pat = str(target)
        names = set(self.resolve(pat))
        self._set_stop(lambda r: r.name in names or r.weight == pat or fnmatch.fnmatchcase(r.name, pat), False)
        return self._run(should_stop)

    def resolve(self, pattern: str) -> list[str]:
        """The op names a name, glob or tensor name matches (UsageError if none does)."""
        cat = self.source.catalogue
        if cat is None:  # a source that cannot list its ops: the pattern is matched as the ops come
            return [pattern]
        return cat.check_target(pattern)

    def check_breakpoint(self, expr: str) -> None:
        """UsageError if `expr` compares `op` or `kind` with a name or glob no op has, or `weight`
        with a tensor no op reads (caught before any op runs)."""
        from qdbg.expr import literal_tests, parse

        cat = self.source.catalogue
        if cat is None:
            return
        for var, op, lit in literal_tests(parse(expr)):
            if op not in ("==", "~"):
                continue
            if var == "op" and op == "==" and lit not in cat.names:
                raise UsageError(f"no op is named {lit!r}" + (
                    f" (it is a tensor: try weight == {lit!r} or op == {cat.by_weight[lit][0]!r})"
                    if cat.is_tensor(lit) else " (ops are named like ffn_up-5)"))
            if var == "op" and op == "~":
                cat.check_target(lit)
            elif var == "kind":
                cat.check_kind(lit)
            elif var == "weight" and not cat.is_tensor(lit) and not cat.match_names(lit):
                raise UsageError(f"no op reads a tensor matching {lit!r}")

    def add_breakpoint(self, expr: str, *, temporary: bool = False, every: bool = False) -> Breakpoint:
        """Parse, check against the op catalogue, and add a breakpoint."""
        self.check_breakpoint(expr)
        return self.breakpoints.add(expr, temporary, every=every)

    # -- results ------------------------------------------------------------------------------
    def final(self) -> LogitsComparison | None:
        """The logits comparison of the last completed pass (A vs B), or None before any."""
        for rec in reversed(self.history):
            if rec.logits:
                return rec.logits.get("A~B")
        return None

    def ops_of_step(self, step: int) -> list[Record]:
        return [r for r in self.history if r.step == step]
