"""LiveSource: the sides' engines run in lockstep over the same tokens, one op at a time.

The prompt runs as llama.cpp runs it (micro-batches of at most n_ubatch tokens, each a pass),
then queued decode steps, each token chosen by A's argmax, B's argmax or forced text, and fed to
every side. Two interventions change the run, and every op they touch is labelled:

- weight patches (`Patch("blk.7.*", "B")`): for tensors matching the glob, the other quantized
  side (A for B, B for A, both A and B for R) computes with the named side's weights
  (`Engine(weight_overrides=...)`); "which weights make the difference?"
- activation resync (`Resync("l_out-*")`): after each matching op, A goes on from B's output, so
  the error measured downstream is what the following ops add themselves. The op's A value stays
  what A computed (its local error is visible); only what A feeds forward is B's.

Two measurements ride along (`Record.aux`, measured by the debugger under its scope):

- attribution (`attribution=True`, the default): right after both sides computed an op, A's op is
  evaluated again on B's inputs of the same pass (qdbg.attribution.recompute), f_A(x_B), so the
  difference splits into what the op adds itself (local = f_A(x_B) - f_B(x_B)) and what it
  inherited (f_A(x_A) - f_A(x_B)). One extra op evaluation per op on A's side.
- noise (`noise=True`): a shadow of A with the other flash-attention setting (llama.cpp's other,
  equally valid kernels) runs alongside, aligned by op name (ops only one setting has, kq and
  kq_soft_max, have no shadow value), with A's weight patches and resyncs; and at the logits a
  second shadow with another micro-batch split (qdbg.noise.SplitShadow) gives each position's
  logits once more. The spread of A's top-2 margin over the shadows is the noise floor.

The sides compute at the same time on separate cores when a pass is big enough to gain (n_embd^2
* (tokens of the pass + ROW_TOKENS) >= CONCURRENT_WORK: TinyLlama's 2048 width from 1 token on,
SmolLM2's 576 from 47): each side runs its pass free in a thread of its own (qdbg.engine.lockstep.Runner, a
bounded number of ops ahead), attribution's f_A(x_B) in a third as soon as B's inputs to an op
exist, and next_op takes one result from each in turn; bit-equal to one after the other. They go
one after the other when a resync is set (A reads B's output, so B goes first) or a weight patch
is (A then reads B's weights), or with `concurrent=False` / $QDBG_LOCKSTEP_THREADS=1.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from qdbg.catalogue import Catalogue, pass_ops
from qdbg.engine import lockstep
from qdbg.engine.forward import Engine
from qdbg.engine.graph import last_reads, pass_ops as graph_ops
from qdbg.engine.result import OpResult
from qdbg.errors import ModelMismatchError, UsageError
from qdbg.numerics import DEFAULT_MODE, RunSettings
from qdbg.records import AUX_CROSS, AUX_SHADOW, AUX_SPLIT, Record
from qdbg.scope import Scope
from qdbg.source import DRIVERS

CONCURRENT_WORK = 1 << 24
"""n_embd^2 * (pass tokens + ROW_TOKENS) from which the sides run concurrently (about 2 ms of the
widest op)."""
ROW_TOKENS = 4
"""A matmul's cost per weight row that does not depend on the tokens (unpacking the row), in
tokens' worth: a one-token pass still reads every weight."""


@dataclass(frozen=True)
class Patch:
    """Tensors matching `glob` come from side `side` on the other quantized side(s)."""

    glob: str
    side: str

    @classmethod
    def parse(cls, text: str) -> Patch:
        """'GLOB=SIDE' (SIDE one of A, B, R); UsageError otherwise."""
        glob, sep, side = str(text).rpartition("=")
        if not sep or not glob or side.upper() not in ("A", "B", "R"):
            raise UsageError(f"--patch wants GLOB=SIDE with SIDE one of A, B, R, got {text!r}")
        return cls(glob, side.upper())

    def targets(self) -> tuple[str, ...]:
        """The sides whose weights are replaced."""
        return {"A": ("B",), "B": ("A",), "R": ("A", "B")}[self.side]

    def label(self) -> str:
        return f"patch {self.glob}: {','.join(self.targets())}<-{self.side}"


@dataclass(frozen=True)
class Resync:
    """After ops matching `glob`, A continues from B's output."""

    glob: str

    def label(self) -> str:
        return f"resync {self.glob}: A<-B"


def _weighted(op: Any) -> bool:
    """Whether attribution evaluates `op` again (A's op on B's inputs): ops with a weight but the
    embedding lookup (its local error is the rows themselves; see LiveSource._cross)."""
    return op.weight is not None and op.fn != "get_rows"


class _CrossRunner:
    """f_A(x_B) of every weighted op of a pass, in its own thread, in op order, as soon as B's
    values it reads exist: B's runner hands each value over (`publish`), this thread computes A's
    op on them and queues (name, value); a value is let go after its last reader."""

    def __init__(self, ops: Sequence[Any], free_after: dict[str, Sequence[str]], engine_a: Engine,
                 engine_b: Engine, positions: tuple[int, ...]) -> None:
        import threading

        self._vals: dict[str, np.ndarray] = {}
        self._cond = threading.Condition()
        self._closed = False
        args = (list(ops), free_after, engine_a, engine_b, positions)
        self._out = lockstep.Runner(self._walk(*args), "cross")

    def publish(self, r: OpResult) -> None:
        with self._cond:
            self._vals[r.name] = r.value
            self._cond.notify_all()

    def _inputs(self, names: Sequence[str]) -> list[np.ndarray] | None:
        with self._cond:
            while not self._closed and any(n not in self._vals for n in names):
                self._cond.wait(0.05)
            return None if self._closed else [self._vals[n] for n in names]

    def _walk(self, ops, free_after, engine_a, engine_b, positions) -> Iterator[tuple[str, np.ndarray]]:
        for op in ops:
            if _weighted(op):
                ins = self._inputs(op.inputs)
                if ins is None:
                    return
                yield op.name, engine_a.compute(op, ins, positions, kv=engine_b)
            with self._cond:
                for n in free_after.get(op.name, ()):
                    self._vals.pop(n, None)

    def get(self) -> tuple[str, np.ndarray] | None:
        return self._out.get()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._out.close()


class LiveSource:
    """An OpSource over engines; see the module docstring."""

    def __init__(self, models: dict[str, Any], tokens: Sequence[int], *, mode: str = DEFAULT_MODE,
                 settings: RunSettings | None = None, pieces: Any = None,
                 patches: Sequence[Patch] = (), resyncs: Sequence[Resync] = (), attribution: bool = True,
                 noise: bool = False, concurrent: bool | None = None) -> None:
        if "A" not in models or "B" not in models:
            raise UsageError("a session needs models A and B")
        if not tokens:
            raise UsageError("a session needs at least one token")
        from qdbg.session import check_match

        check_match(models)
        n_ctx = min(m.config.n_ctx_train for m in models.values())
        if len(tokens) > n_ctx:
            raise UsageError(f"the prompt has {len(tokens)} tokens, more than the context ({n_ctx})")
        self.models = models
        self.labels = [lab for lab in ("A", "B", "R") if lab in models]
        self.prompt = [int(t) for t in tokens]
        self.prompt_text: str | None = None
        self.mode = mode
        self.settings = settings or RunSettings()
        self.pieces = pieces
        self.attribution = attribution
        self.noise = noise
        self.concurrent = concurrent
        """Run the sides concurrently: None decides per pass by its size (see the module docstring);
        True or False forces it (a resync or a weight patch still runs them in order)."""
        self._concurrent_pass = False
        self.engines: dict[str, Engine] = {}
        self.catalogue = Catalogue(pass_ops(models["A"].config, self.settings.flash_attn))
        self.set_interventions(patches, resyncs)
        self.reset()

    def set_interventions(self, patches: Sequence[Patch], resyncs: Sequence[Resync]) -> None:
        """Replace the weight patches and resyncs (checked first: on a UsageError nothing changes);
        they take effect at the next `reset` (the debugger's restart), so a prefetching wrapper can
        quiesce first."""
        patches, resyncs = list(patches), list(resyncs)
        for p in patches:
            if p.side not in self.labels:
                raise UsageError(f"--patch {p.glob}={p.side}: there is no side {p.side} (give --ref for R)")
        weights = self._patched_weights(patches)  # checks the globs before any op
        for r in resyncs:
            if not self.catalogue.match_names(r.glob):
                raise UsageError(f"--resync {r.glob}: no op matches (ops are named like l_out-5)")
        self.patches, self.resyncs, self._weight_patches = patches, resyncs, weights

    # -- interventions ------------------------------------------------------------------------
    def _patched_weights(self, patches: Sequence[Patch]) -> dict[str, dict[str, Any]]:
        """label -> {tensor name: Weight from the patch's side}."""
        out: dict[str, dict[str, Any]] = {}
        names = list(self.models["A"].tensors)
        for p in patches:
            hit = [n for n in names if fnmatch.fnmatchcase(n, p.glob)]
            if not hit:
                raise UsageError(f"--patch {p.glob}={p.side}: no tensor matches (tensors are named like "
                                 f"blk.5.ffn_up.weight)")
            for lab in p.targets():
                for n in hit:
                    out.setdefault(lab, {})[n] = self.models[p.side].weight(n)
        return out

    def interventions(self) -> list[dict[str, Any]]:
        return ([{"kind": "patch", "glob": p.glob, "side": p.side, "targets": list(p.targets()),
                  "label": p.label()} for p in self.patches]
                + [{"kind": "resync", "glob": r.glob, "from": "B", "to": "A", "label": r.label()}
                   for r in self.resyncs])

    def _resync_hook(self) -> Any:
        """Engine hook for A: B's value of a matching op (B steps first), else None."""
        globs = [r.glob for r in self.resyncs]

        def hook(res: OpResult) -> np.ndarray | None:
            b = self._current.get("B")
            if b is not None and b.name == res.name and any(fnmatch.fnmatchcase(res.name, g) for g in globs):
                self._resynced = True
                return b.value
            return None

        return hook

    # -- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        wp = getattr(self, "_weight_patches", {})
        self.engines = {}
        for lab, m in self.models.items():
            hook = self._resync_hook() if lab == "A" and self.resyncs else None
            self.engines[lab] = Engine(m, self.mode, overrides=hook, weight_overrides=wp.get(lab),
                                       settings=self.settings)
        self.shadow: Engine | None = None
        self.split_shadow: Any = None
        if self.noise:
            from qdbg.noise import SplitShadow, shadow_settings

            flash, *split = shadow_settings(self.settings, len(self.prompt))
            split = split if not self.resyncs else []  # a resync's B values fit only A's own passes
            self.shadow_labels = [flash[0]] + [lab for lab, _ in split]
            self.shadow = Engine(self.models["A"], self.mode, overrides=self._resync_hook() if self.resyncs else None,
                                 weight_overrides=wp.get("A"), settings=flash[1])
            self._shadow_names = {o.name for o in graph_ops(self.models["A"].config, flash[1].flash_attn)}
            if split:
                self.split_shadow = SplitShadow(self.models["A"], self.prompt, mode=self.mode, settings=split[0][1],
                                                weight_overrides=wp.get("A"))
        self._ops = graph_ops(self.models["A"].config, self.settings.flash_attn)
        self._free_after = {self._ops[i].name: names for i, names in last_reads(self._ops).items()}
        self._chunks = self.engines["A"].ubatches(self.prompt)
        self.tokens = list(self.prompt)
        self.pending: list[int | None] = []
        self.driver = "a"
        self._gens: dict[str, Iterator[OpResult]] | None = None
        self._current: dict[str, OpResult] = {}
        self._last_logits: dict[str, np.ndarray] = {}
        self._start_pass(self._chunks.pop(0))

    @property
    def exhausted(self) -> bool:
        return self._gens is None and not self.pending and not self._chunks

    def numerics_info(self) -> dict[str, Any]:
        return self.engines["A"].numerics.to_json()

    def numerics_text(self) -> str:
        return self.engines["A"].numerics.describe()

    def held_positions(self, rec: Record) -> tuple[int, ...] | None:
        return rec.positions if rec.values else None

    def recorded(self, rec: Record, scope: Scope) -> bool:
        return False

    def check_scope(self, scope: Scope) -> None:
        return None

    # -- computing ops ------------------------------------------------------------------------
    def _concurrency(self, n_tok: int) -> bool:
        """Whether this pass's sides run concurrently (see the module docstring)."""
        if self.resyncs or self.patches or lockstep.threads() <= 1:
            return False
        if self.concurrent is not None:
            return self.concurrent
        n_embd = self.models["A"].config.n_embd
        return n_embd * n_embd * (n_tok + ROW_TOKENS) >= CONCURRENT_WORK

    def _start_pass(self, tokens: Sequence[int]) -> None:
        self._concurrent_pass = self._concurrency(len(tokens))
        n_past = self.engines["A"].n_past
        self._pass_pos = tuple(range(n_past, n_past + len(tokens)))
        self._op_i = 0  # index of the pass's next op in self._ops
        self._early_cross: tuple[str, np.ndarray] | None = None  # f_A(x_B) computed alongside the sides
        self._stop_runners()
        self._gens = {lab: e.forward(tokens) for lab, e in self.engines.items()}
        if self._concurrent_pass:   # each side free-running in its own thread, attribution in a third
            cross = None
            if self.attribution:
                cross = _CrossRunner(self._ops, self._free_after, self.engines["A"], self.engines["B"],
                                     self._pass_pos)
            self._cross_runner = cross
            self._runners = {lab: lockstep.Runner(g, lab, on_result=cross.publish if cross and lab == "B" else None)
                             for lab, g in self._gens.items()}
        self._env_b: dict[str, np.ndarray] = {}  # B's values of a sequential pass, for A's op on B's inputs
        self._shadow_gen = None if self.shadow is None else self.shadow.forward(tokens)
        self._shadow_vals: dict[str, np.ndarray] = {}

    def _shadow_value(self, name: str) -> np.ndarray | None:
        """The flash-attention shadow's value of op `name` in this pass (None: the shadow has no
        such op). The shadow is pulled forward until it yields `name`."""
        if self._shadow_gen is None or name not in self._shadow_names:
            return None
        while name not in self._shadow_vals:
            r = next(self._shadow_gen, None)
            if r is None:
                return None
            self._shadow_vals[r.name] = r.computed if r.computed is not None else r.value
        return self._shadow_vals.pop(name)

    def _cross(self, a: OpResult, b: OpResult) -> np.ndarray | None:
        """f_A(x_B): A's op on B's inputs of this pass (None if one is missing)."""
        from qdbg.attribution import recompute

        if a.kind == "embed":
            return a.computed if a.computed is not None else a.value
        if a.weight is None:
            # a weightless op (RoPE, attention, residual, GLU, scale) runs the same arithmetic on
            # both sides (one mode per session), so on B's inputs A computes B's output bit for
            # bit: local is exactly 0 without computing it again
            return b.computed if b.computed is not None else b.value
        try:
            ins = [self._env_b[n] for n in b.inputs]
        except KeyError:
            return None
        return recompute(a, ins, self.engines["A"], kv=self.engines["B"])

    def _stop_runners(self) -> None:
        """Stop the threads of a pass under way (a reset, or the pass is over)."""
        for r in (getattr(self, "_runners", None) or {}).values():
            r.close()
        if getattr(self, "_cross_runner", None) is not None:
            self._cross_runner.close()
        self._runners: dict[str, lockstep.Runner] | None = None
        self._cross_runner: _CrossRunner | None = None

    def next_op(self, index: int) -> Record | None:
        while True:
            if self._gens is None:
                if self._chunks:
                    self._start_pass(self._chunks.pop(0))
                elif self.pending:
                    self._start_pass([self._next_token(self.pending.pop(0))])
                else:
                    return None
            assert self._gens is not None
            self._current = {}
            self._resynced = False
            order = ["B", "A"] + [lab for lab in self._gens if lab not in ("A", "B")]  # B first: resync reads it
            if self._runners is not None:
                try:
                    for lab in order:
                        r = self._runners[lab].get()
                        if r is None:
                            break
                        self._current[lab] = r
                    op = self._ops[self._op_i] if self._op_i < len(self._ops) else None
                    if (self._cross_runner is not None and op is not None and _weighted(op)
                            and len(self._current) == len(self._gens)):
                        self._early_cross = self._cross_runner.get()
                except BaseException:
                    self._stop_runners()   # the other threads end too (none waits on the failed side)
                    raise
            else:
                for lab in order:
                    r = next(self._gens[lab], None)
                    if r is None:
                        break
                    self._current[lab] = r
            if len(self._current) == len(self._gens):
                break
            self._stop_runners()
            self._gens = None
        results = {lab: self._current[lab] for lab in self.labels}
        names = {r.name for r in results.values()}
        if len(names) != 1:
            raise ModelMismatchError(f"the sides diverged in structure: {sorted(names)}")
        a = results["A"]
        rec = Record(
            index=index, name=a.name, kind=a.kind, layer=a.layer, step=a.step,
            positions=a.positions, axes=a.axes, inputs=a.inputs, weight=a.weight,
            weight_types={lab: r.weight_type for lab, r in results.items()}, ggml_name=a.ggml_name,
            values={lab: r.value for lab, r in results.items()},
        )
        if self._resynced and a.computed is not None:  # A's own output is what shows its local error
            rec.values["A"] = a.computed
            rec.interventions.append("resync A<-B")
        if a.weight:
            rec.interventions += [p.label() for p in self.patches if fnmatch.fnmatchcase(a.weight, p.glob)]
        b = results["B"]
        self._op_i += 1
        early, self._early_cross = self._early_cross, None
        if self.attribution:
            cross = early[1] if early is not None and early[0] == a.name else self._cross(a, b)
            if cross is not None:
                rec.aux[AUX_CROSS] = cross
        if self.attribution and self._cross_runner is None:   # (a concurrent pass's cross runner keeps its own)
            self._env_b[b.name] = b.value
            for n in self._free_after.get(b.name, ()):
                self._env_b.pop(n, None)
        if self.shadow is not None:
            sv = self._shadow_value(a.name)
            if sv is not None:
                rec.aux[AUX_SHADOW] = sv
        if a.name == "result_output":
            self._stop_runners()
            self._gens = None
            self._last_logits = {lab: r.value for lab, r in results.items()}
            if self._shadow_gen is not None:
                for _ in self._shadow_gen:  # the shadow's pass ends with A's
                    pass
                self._shadow_gen = None
            if self.split_shadow is not None:
                rec.aux[AUX_SPLIT] = self.split_shadow.rows(a.positions, self.tokens)
        return rec

    def _next_token(self, forced: int | None) -> int:
        if forced is not None:
            tok = forced
        else:
            side = "A" if self.driver == "a" else "B"
            if side not in self._last_logits:
                raise UsageError("no logits yet: run the prompt to its end first")
            tok = int(np.argmax(self._last_logits[side][-1]))
        self.tokens.append(tok)
        return tok

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
