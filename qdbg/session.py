"""Session: two (or three) engines stepped in lockstep over the same tokens, in the spirit of bdb.

Sides are A and B (the two quantizations) and optionally R, a higher-precision reference. Every
op yields one Record with each side's value, stats and the pairwise metrics (A vs B, and A vs R,
B vs R when R is given). Verbs move a cursor through the history, computing new ops only at its
frontier: step, back, next_layer, cont (to a breakpoint or the end), run_to (name, glob or layer),
restart, decode (N more tokens, chosen by A's argmax, B's argmax or forced text).
Scope: metrics cover one token position (default: the last, the one that picks the next token)
or all positions.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from qdbg import metrics
from qdbg.breakpoints import Breakpoint, BreakpointList, variables_from
from qdbg.engine.forward import Engine
from qdbg.engine.result import OpResult
from qdbg.errors import ModelMismatchError, QdbgError, UsageError
from qdbg.numerics import DEFAULT_MODE, RunSettings

PAIRS = (("A", "B"), ("A", "R"), ("B", "R"))
SCOPE_LAST, SCOPE_ALL = "last", "all"
DRIVERS = ("a", "b", "text")


@dataclass(eq=False)
class Record:
    """One op across all sides: identity, values, per-side stats and pairwise metrics."""

    index: int
    name: str
    kind: str
    layer: int | None
    step: int
    positions: tuple[int, ...]
    axes: tuple[str, ...]
    inputs: tuple[str, ...]
    weight: str | None
    weight_types: dict[str, str | None]
    ggml_name: str | None
    values: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    stats: dict[str, dict] = field(default_factory=dict, repr=False)
    pairs: dict[str, dict] = field(default_factory=dict, repr=False)
    logits: dict[str, dict] | None = field(default=None, repr=False)

    @property
    def pair(self) -> dict:
        """The A vs B metrics (B is the reference of the ratios)."""
        return self.pairs.get("A~B", {})


@dataclass
class Stop:
    """Why a run verb stopped: 'step', 'breakpoint', 'target', 'end', 'interrupted'."""

    reason: str
    record: Record | None
    breakpoints: list[Breakpoint] = field(default_factory=list)


def parse_scope(scope: str | int) -> str | int:
    """'last', 'all', or a token position >= 0 (as int or text); UsageError otherwise."""
    if scope in (SCOPE_LAST, SCOPE_ALL):
        return scope
    try:
        pos = int(scope)
    except (TypeError, ValueError):
        raise UsageError(f"scope must be 'last', 'all' or a position, got {scope!r}") from None
    if pos < 0:
        raise UsageError(f"scope position must be >= 0, got {pos}")
    return pos


def check_match(models: dict[str, Any]) -> None:
    """Raise ModelMismatchError naming the first difference between the models' shapes/vocab."""
    labels = list(models)
    ref = models[labels[0]]
    for lab in labels[1:]:
        m = models[lab]
        a, b = ref.config, m.config
        for f in ("arch", "n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff",
                  "rope_type", "n_rot", "qkv_bias", "qk_norm", "post_norms", "ffn_act", "n_swa"):
            if getattr(a, f) != getattr(b, f):
                raise ModelMismatchError(
                    f"{ref.path.name} and {m.path.name} differ in {f}: {getattr(a, f)} vs {getattr(b, f)}")
        ta, tb = ref.tensors, m.tensors
        for name in sorted(set(ta) ^ set(tb)):
            where = ref.path.name if name in ta else m.path.name
            raise ModelMismatchError(f"tensor '{name}' is only in {where}")
        for name, t in ta.items():
            if tuple(t.shape) != tuple(tb[name].shape):
                raise ModelMismatchError(
                    f"tensor '{name}' has shape {list(t.shape)} in {ref.path.name} "
                    f"but {list(tb[name].shape)} in {m.path.name}")
        va = ref.metadata.get("tokenizer.ggml.tokens")
        vb = m.metadata.get("tokenizer.ggml.tokens")
        if (va is None) != (vb is None) or (va is not None and len(va) != len(vb)):
            raise ModelMismatchError(f"{ref.path.name} and {m.path.name} have different vocabularies")
        if va is not None:
            n = len(va)
            for i in sorted({0, 1, 2, n // 3, n // 2, n - 2, n - 1} & set(range(n))):
                if va[i] != vb[i]:
                    raise ModelMismatchError(
                        f"{ref.path.name} and {m.path.name} have different vocabularies "
                        f"(token {i}: {va[i]!r} vs {vb[i]!r})")


def numerics_label(info: dict[str, Any]) -> str:
    """A few words naming a numerics JSON record: the mode and the build it reproduces."""
    prof = info.get("profile") or {}
    return f"{info.get('mode', '?')}" + (f" ({prof['label']})" if prof.get("label") else "")


class Session:
    """Lockstep stepping of A, B (and R) over one token sequence; see the module docstring."""

    def __init__(
        self,
        models: dict[str, Any],
        tokens: Sequence[int],
        *,
        mode: str = DEFAULT_MODE,
        scope: str | int = SCOPE_LAST,
        top_k: int = 10,
        pieces: Any = None,
        settings: RunSettings | None = None,
    ) -> None:
        if "A" not in models or "B" not in models:
            raise UsageError("a session needs models A and B")
        if not tokens:
            raise UsageError("a session needs at least one token")
        check_match(models)
        n_ctx = min(m.config.n_ctx_train for m in models.values())
        if len(tokens) > n_ctx:
            raise UsageError(f"the prompt has {len(tokens)} tokens, more than the context ({n_ctx})")
        self.models = models
        self.prompt_text: str | None = None
        self.labels = [lab for lab in ("A", "B", "R") if lab in models]
        self.prompt = [int(t) for t in tokens]
        self.mode = mode
        self.settings = settings or RunSettings()
        self.top_k = top_k
        self.pieces = pieces
        self.breakpoints = BreakpointList()
        self._scope: str | int = SCOPE_LAST
        self.set_scope(scope)
        self.restart()

    # -- state -------------------------------------------------------------------------------
    def restart(self) -> None:
        """Back to before the first op: fresh engines, empty history (breakpoints stay)."""
        self.engines = {lab: Engine(m, self.mode, settings=self.settings)
                        for lab, m in self.models.items()}
        # the prompt runs as llama.cpp runs it: micro-batches of at most n_ubatch tokens, each a pass
        self._chunks = self.engines["A"].ubatches(self.prompt)
        self.history: list[Record] = []
        self.cursor = -1
        self.tokens = list(self.prompt)
        self.pending: list[int | None] = []   # decode steps still to run (None: choose by driver)
        self.driver = "a"
        self._gens: dict[str, Iterator[OpResult]] | None = None
        self._start_pass(self._chunks.pop(0))

    def numerics_info(self) -> dict[str, Any]:
        """The numeric mode, the llama.cpp build it reproduces, and the run settings (JSON)."""
        return self.engines["A"].numerics.to_json()

    def numerics_label(self) -> str:
        """A few words for headers: 'exact (llama.cpp 0.3.36 x86-64 AVX2)', 'f32'."""
        return numerics_label(self.numerics_info())

    def numerics_text(self) -> str:
        """One line for headers: the mode and what it reproduces."""
        return self.engines["A"].numerics.describe()

    @property
    def current(self) -> Record | None:
        return self.history[self.cursor] if self.cursor >= 0 else None

    @property
    def at_end(self) -> bool:
        return (self._gens is None and not self.pending and not self._chunks
                and self.cursor == len(self.history) - 1)

    @property
    def scope(self) -> str | int:
        return self._scope

    def set_scope(self, scope: str | int) -> None:
        """'last' (default), 'all', or an absolute token position; recomputes the metrics."""
        self._scope = parse_scope(scope)
        for rec in getattr(self, "history", []):
            self._measure(rec)

    # -- computing ops ------------------------------------------------------------------------
    def _start_pass(self, tokens: Sequence[int]) -> None:
        self._gens = {lab: e.forward(tokens) for lab, e in self.engines.items()}

    def _advance(self) -> Record | None:
        """Compute the next op on every side; None when nothing is left to run."""
        if self._gens is None:
            if self._chunks:
                self._start_pass(self._chunks.pop(0))
            elif not self.pending:
                return None
            else:
                self._start_pass([self._next_token(self.pending.pop(0))])
        assert self._gens is not None
        results: dict[str, OpResult] = {}
        for lab, g in self._gens.items():
            r = next(g, None)
            if r is None:
                break
            results[lab] = r
        if len(results) != len(self._gens):
            self._gens = None
            return self._advance()
        names = {r.name for r in results.values()}
        if len(names) != 1:
            raise ModelMismatchError(f"the sides diverged in structure: {sorted(names)}")
        a = results["A"]
        rec = Record(
            index=len(self.history), name=a.name, kind=a.kind, layer=a.layer, step=a.step,
            positions=a.positions, axes=a.axes, inputs=a.inputs, weight=a.weight,
            weight_types={lab: r.weight_type for lab, r in results.items()}, ggml_name=a.ggml_name,
            values={lab: r.value for lab, r in results.items()},
        )
        self._measure(rec)
        self.history.append(rec)
        if a.name == "result_output":
            self._gens = None
        return rec

    def _next_token(self, forced: int | None) -> int:
        if forced is not None:
            tok = forced
        else:
            last = self._last_logits()
            side = "A" if self.driver == "a" else "B"
            tok = int(np.argmax(last.values[side][-1]))
        self.tokens.append(tok)
        return tok

    def _last_logits(self) -> Record:
        for rec in reversed(self.history):
            if rec.name == "result_output":
                return rec
        raise UsageError("no logits yet: run the prompt to its end first")

    # -- metrics --------------------------------------------------------------------------
    def _scope_slice(self, rec: Record, x: np.ndarray) -> np.ndarray | None:
        if self._scope == SCOPE_ALL or "token" not in rec.axes:
            return x
        ax = rec.axes.index("token")
        if self._scope == SCOPE_LAST:
            i = len(rec.positions) - 1
        else:
            if self._scope not in rec.positions:
                return None
            i = rec.positions.index(self._scope)
        return np.take(x, [i], axis=ax)

    def _scope_positions(self, rec: Record) -> list[int]:
        """Absolute token positions of the rows the scope keeps of this record."""
        if self._scope == SCOPE_ALL:
            return list(rec.positions)
        if self._scope == SCOPE_LAST:
            return [rec.positions[-1]]
        return [int(self._scope)]

    def scoped(self, rec: Record, side: str) -> np.ndarray | None:
        """One side's value of `rec` cut to the current scope (None if the scope misses it)."""
        v = rec.values.get(side)
        return None if v is None else self._scope_slice(rec, v)

    def _inputs_of(self, rec: Record) -> dict[str, Record]:
        """The records `rec` read, found by walking back through its own pass (inputs come earlier
        in the same pass, usually within one layer), not by indexing the whole history."""
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
        vals = {lab: self._scope_slice(rec, v) for lab, v in rec.values.items()}
        rec.stats, rec.pairs, rec.logits = {}, {}, None
        if any(v is None for v in vals.values()):
            return
        rec.stats = {lab: metrics.tensor_stats(v) for lab, v in vals.items()}
        prev = self._inputs_of(rec)
        for x, y in PAIRS:
            if x in vals and y in vals:
                key = f"{x}~{y}"
                ins = [prev[n].pairs.get(key, {}).get("rel_rms") for n in rec.inputs if n in prev]
                ins = [v for v in ins if v is not None]
                rec.pairs[key] = metrics.pair_metrics(
                    vals[x], vals[y], axes_names=rec.axes, input_rel_rms=max(ins) if ins else None)
        if rec.name == "result_output":
            rec.logits = {}
            pos = self._scope_positions(rec)
            for x, y in PAIRS:
                if x in vals and y in vals:
                    lc = metrics.logits_compare(vals[x], vals[y], k=self.top_k, pieces=self.pieces)
                    # rows are the scope's rows: report absolute token positions
                    lc["flip_positions"] = [pos[i] for i in lc["flip_positions"]]
                    for p in lc["positions"]:
                        p["pos"] = pos[p["pos"]]
                    rec.logits[f"{x}~{y}"] = lc

    def variables(self, rec: Record) -> dict[str, Any]:
        """The breakpoint variables of a record (A vs B)."""
        tok = None
        if rec.positions:
            tok = rec.positions[-1] if self._scope in (SCOPE_LAST, SCOPE_ALL) else self._scope
        return variables_from(op=rec.name, kind=rec.kind, layer=rec.layer, token=tok,
                              pair=rec.pairs.get("A~B"),
                              logits=(rec.logits or {}).get("A~B"))

    # -- verbs ------------------------------------------------------------------------------
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

    def _run(self, until, check_breaks: bool = True, should_stop=None) -> Stop:
        while True:
            if should_stop is not None and should_stop():
                return Stop("interrupted", self.current)
            st = self.step()
            if st.reason == "end":
                return st
            rec = st.record
            assert rec is not None
            if check_breaks:
                hit = self.breakpoints.check(self.variables(rec))
                if hit:
                    return Stop("breakpoint", rec, hit)
            if until is not None and until(rec):
                return Stop("target", rec)

    def cont(self, should_stop=None) -> Stop:
        """Run until a breakpoint fires or nothing is left (`should_stop()` polled between ops)."""
        return self._run(None, should_stop=should_stop)

    def run_to_end(self, should_stop=None) -> Stop:
        """Run to the end, ignoring breakpoints."""
        return self._run(None, check_breaks=False, should_stop=should_stop)

    def next_layer(self, should_stop=None) -> Stop:
        """Run to the first op of the next layer (or the final norm after the last layer)."""
        cur = self.current
        here = (cur.step, cur.layer if cur and cur.layer is not None else -1) if cur else (0, -2)

        def until(rec: Record) -> bool:
            lay = rec.layer if rec.layer is not None else (10**9 if rec.name.startswith("result") else -1)
            return (rec.step, lay) > here and rec.name != "inp_scaled"

        return self._run(until, should_stop=should_stop)

    def run_to(self, target: str | int, should_stop=None) -> Stop:
        """Run to the next op matching `target`: an exact name, a glob (`ffn_*-5`) or a layer number."""
        if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()):
            layer = int(target)
            n_layer = self.models["A"].config.n_layer
            if not 0 <= layer < n_layer:
                raise UsageError(f"layer {layer} does not exist (0..{n_layer - 1})")
            return self._run(lambda r: r.layer == layer, check_breaks=False, should_stop=should_stop)
        pat = str(target)
        return self._run(lambda r: r.name == pat or fnmatch.fnmatchcase(r.name, pat),
                         check_breaks=False, should_stop=should_stop)

    def decode(self, n: int, driver: str = "a", text_tokens: Sequence[int] | None = None) -> None:
        """Queue n more tokens after what is queued; every side is fed the same token.

        driver 'a' or 'b': that side's argmax at the last position; 'text': `text_tokens` in order.
        """
        if driver not in DRIVERS:
            raise UsageError(f"driver must be one of {', '.join(DRIVERS)}")
        if n < 0:
            raise UsageError("decode needs a non-negative count")
        limit = min(m.config.n_ctx_train for m in self.models.values())
        if len(self.tokens) + len(self.pending) + n > limit:
            raise UsageError(f"decoding {n} more tokens would exceed the context ({limit})")
        self.driver = driver
        if driver == "text":
            forced = list(text_tokens or [])
            if len(forced) < n:
                raise UsageError(f"forced text gives {len(forced)} tokens, {n} requested")
            self.pending.extend(forced[:n])
        else:
            self.pending.extend([None] * n)

    # -- results ------------------------------------------------------------------------------
    def final(self) -> dict[str, Any] | None:
        """The logits comparison of the last completed pass (A vs B), or None before any."""
        for rec in reversed(self.history):
            if rec.logits:
                return rec.logits.get("A~B")
        return None

    def ops_of_step(self, step: int) -> list[Record]:
        return [r for r in self.history if r.step == step]


def open_session(paths: dict[str, str], tokens: Sequence[int] | None = None, *, prompt: str | None = None,
                 chat: bool = False, mode: str = DEFAULT_MODE, **kw: Any) -> Session:
    """Factory used by the CLI and tests: open models by path and build a Session."""
    from qdbg.model import Model

    models = {lab: Model(p) for lab, p in paths.items()}
    if tokens is None:
        if prompt is None:
            raise UsageError("give a prompt or tokens")
        tok = models["A"].tokenizer
        text = tok.render_chat([{"role": "user", "content": prompt}]) if chat else prompt
        tokens = tok.encode(text)
    try:
        pieces = models["A"].tokenizer.piece
    except QdbgError:
        pieces = None
    s = Session(models, tokens, mode=mode, pieces=pieces, **kw)
    s.prompt_text = prompt
    return s
