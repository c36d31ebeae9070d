"""Bisect to a recipe: the few tensors of A that, taken from B (or R), make A agree with B.

`bisect()` works on token sequences (one per prompt) and looks at the last position of each:

1. Before: B's and A's logits; the positions where A's top-1 differs from B's, and the mean
   KL(B||A) over all positions.
2. Candidates: the tensors whose bytes differ between A and the source (B, or the reference R),
   that llama-quantize can give the source's type (a quantizable tensor and a row length that
   type takes without falling back), ranked by the largest local error of an op reading them
   (qdbg.attribution: ||f_A(x_src) - f_src(x_src)|| / ||f_src(x_src)||, over every prompt).
3. Greedy: add candidates in that order, one full forward of A per prompt per trial (A with those
   tensors replaced by the source's bytes), until the target holds: `flip` (A picks B's top-1 at
   every position) or `kl<X` (mean KL(B||A) under X).
4. Prune: drop each chosen tensor whose removal keeps the target (again one trial each).
5. Recipe: llama-quantize `--tensor-type NAME=TYPE` arguments that rebuild A's file type with
   those tensors upgraded. llama.cpp skips its attn_v/ffn_down counters on overridden tensors,
   which can change later tensors' types; the recipe pins every tensor that would move, checked
   with qdbg's port of llama.cpp's type choice (qdbg.quant.mixes) until the plan is A plus the
   upgrades.

A replaced tensor holds the source's bytes, which are what llama-quantize writes for that type
when A and the source come from the same unquantized file; the recipe's file then computes what
the last trial computed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from gguf import GGMLQuantizationType as Q

from qdbg.attribution import attribute_run
from qdbg.engine.forward import Engine
from qdbg.errors import UsageError
from qdbg.metrics import logits_compare
from qdbg.quant import row_bytes
from qdbg.quant.mixes import (FTYPES, LLAMA_MIXES, PURE_EXTRA, SUPPORTED_QTYPES, _fallback,
                              tensor_allows_quantization, tensor_types)
from qdbg.quant.overrides import TensorTypeOverride, to_args

__all__ = ["Target", "parse_target", "Evaluation", "Upgrade", "BisectResult", "bisect",
           "plan_recipe", "recipe_text"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """`flip`: A's top-1 is B's at every position; `kl<X`: mean KL(B||A) < X."""

    kind: str
    threshold: float | None = None

    def met(self, ev: "Evaluation") -> bool:
        if self.kind == "flip":
            return not ev.flips
        return ev.kl_mean is not None and ev.kl_mean < float(self.threshold or 0.0)

    def __str__(self) -> str:
        return "flip" if self.kind == "flip" else f"kl<{self.threshold:g}"


def parse_target(text: str) -> Target:
    """`flip` or `kl<X` with X a positive number."""
    t = text.strip().replace(" ", "")
    if t == "flip":
        return Target("flip")
    m = re.fullmatch(r"kl<([0-9.eE+-]+)", t)
    if m:
        try:
            x = float(m.group(1))
        except ValueError:
            x = math.nan
        if x > 0 and math.isfinite(x):
            return Target("kl", x)
    raise UsageError(f"--target {text!r}: expected 'flip' or 'kl<X' with X > 0 (e.g. kl<0.01)")


@dataclass
class Evaluation:
    """A against B at the last position of each prompt."""

    top1_a: list[int]
    top1_b: list[int]
    kl: list[float | None]  # KL(B||A) per prompt, nats

    @property
    def flips(self) -> list[int]:
        return [i for i, (a, b) in enumerate(zip(self.top1_a, self.top1_b)) if a != b]

    @property
    def kl_mean(self) -> float | None:
        vals = [k for k in self.kl if k is not None]
        return float(np.mean(vals)) if len(vals) == len(self.kl) and vals else None

    def to_json(self) -> dict[str, Any]:
        return {"top1_a": self.top1_a, "top1_b": self.top1_b, "flips": self.flips,
                "kl_ba": self.kl, "kl_ba_mean": self.kl_mean}


@dataclass
class Upgrade:
    tensor: str
    from_type: str
    to_type: str
    bytes_added: int
    local: float | None  # the largest local error of an op reading it (the ranking key); None: --patch

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "from": self.from_type, "to": self.to_type,
                "bytes_added": self.bytes_added, "local": self.local, "patched": self.local is None}


@dataclass
class BisectResult:
    target: Target
    before: Evaluation
    after: Evaluation
    met: bool
    upgrades: list[Upgrade]
    bytes_a: int
    recipe: list[TensorTypeOverride]
    ftype: str | None
    trials: int
    n_candidates: int
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_added(self) -> int:
        return sum(u.bytes_added for u in self.upgrades)

    @property
    def fraction_added(self) -> float:
        return self.bytes_added / self.bytes_a if self.bytes_a else 0.0

    @property
    def tensor_type_args(self) -> list[str]:
        return to_args(self.recipe)

    def to_json(self) -> dict[str, Any]:
        return {"target": str(self.target), "met": self.met,
                "upgrades": [u.to_json() for u in self.upgrades],
                "bytes_added": self.bytes_added, "fraction_added": self.fraction_added,
                "before": self.before.to_json(), "after": self.after.to_json(),
                "ftype": self.ftype, "tensor_type_args": self.tensor_type_args,
                "trials": self.trials, "candidates": self.n_candidates, "notes": self.notes}


def recipe_text(recipe: Sequence[TensorTypeOverride]) -> str:
    """llama-quantize's --tensor-type-file format: one PATTERN=TYPE per line."""
    return "".join(f"{o}\n" for o in recipe)


# --- evaluation -------------------------------------------------------------------------------

def _last_logits(engine: Engine, tokens: Sequence[int]) -> np.ndarray:
    return engine.logits(tokens)[-1]


def _evaluate(rows_a: list[np.ndarray], rows_b: list[np.ndarray]) -> Evaluation:
    cmp = logits_compare(np.stack(rows_a), np.stack(rows_b), k=1)
    pos = cmp["positions"]
    return Evaluation([p["a"]["top"][0]["id"] for p in pos], [p["b"]["top"][0]["id"] for p in pos],
                      [p["kl_ba"] for p in pos])


# --- candidates -------------------------------------------------------------------------------

def _tensor_bytes(qtype: Q, shape: Sequence[int]) -> int:
    n_rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return n_rows * row_bytes(qtype, int(shape[-1]))


def _reachable(name: str, shape: Sequence[int], qtype: Q) -> str | None:
    """Why llama-quantize cannot give tensor `name` type `qtype` through --tensor-type (or None)."""
    if not tensor_allows_quantization(name, shape):
        return "llama.cpp never quantizes it"
    if qtype not in SUPPORTED_QTYPES:
        return f"qdbg cannot write {qtype.name}"
    if _fallback(name, int(shape[-1]), qtype) != qtype:
        return f"a row of {shape[-1]} does not take {qtype.name} (llama.cpp would fall back)"
    return None


def _differs(a: Any, src: Any, name: str) -> bool:
    ta, ts = a.tensors[name], src.tensors[name]
    if ta.qtype != ts.qtype:
        return True
    return not np.array_equal(np.asarray(a.gguf.raw(name)), np.asarray(src.gguf.raw(name)))


def rank_candidates(model_a: Any, source: Any, prompts: Sequence[Sequence[int]], mode: str,
                    settings: Any, notes: list[str], progress: Any = None) -> list[tuple[str, float]]:
    """(tensor, largest local error) for every tensor worth trying, highest first."""
    score: dict[str, float] = {}
    for i, toks in enumerate(prompts):
        if progress is not None:
            progress(f"ranking tensors by local error: prompt {i + 1}", i, len(prompts))
        ea = Engine(model_a, mode, settings=settings)
        es = Engine(source, mode, settings=settings)
        for att in attribute_run(ea, es, toks):
            if att.weight is not None:
                v = att.local_rel if math.isfinite(att.local_rel) else math.inf
                score[att.weight] = max(score.get(att.weight, 0.0), v)
    out = []
    for name, s in score.items():
        if not _differs(model_a, source, name):
            continue
        t = source.tensors[name]
        why = _reachable(name, t.shape, t.qtype)
        if why:
            notes.append(f"{name} not tried as {t.qtype.name}: {why}")
            continue
        out.append((name, s))
    out.sort(key=lambda kv: (-kv[1], kv[0]))
    return out


# --- recipe -----------------------------------------------------------------------------------

def _ftype_names(model: Any) -> list[str]:
    ft = model.metadata.get("general.file_type")
    if ft is None:
        return []
    return [n for table in (FTYPES, LLAMA_MIXES, PURE_EXTRA) for n, i in table.items()
            if i.llama_ftype == int(ft)]


def _plan(model: Any, ftype: str, overrides: Sequence[TensorTypeOverride]) -> dict[str, Q]:
    cfg = model.config
    shapes = {n: tuple(t.shape) for n, t in model.tensors.items()}
    return tensor_types(shapes, ftype, cfg.n_layer, n_head=cfg.n_head, n_head_kv=cfg.n_head_kv,
                        arch=cfg.arch, overrides=overrides)


def _pattern(name: str, names: Sequence[str]) -> str:
    """The plain name when, as a regex, it is found in no other tensor's name; else anchored."""
    rx = re.compile(name)
    if all(n == name or not rx.search(n) for n in names):
        return name
    return "^" + re.escape(name) + "$"


def plan_recipe(model_a: Any, upgrades: dict[str, Q], notes: list[str]
                ) -> tuple[str | None, list[TensorTypeOverride]]:
    """(A's file type, the overrides that rebuild A with `upgrades`), pins included."""
    names = list(model_a.tensors)
    want = {n: t.qtype for n, t in model_a.tensors.items()}
    want.update(upgrades)
    rules = {n: TensorTypeOverride(_pattern(n, names), q) for n, q in upgrades.items()}
    cands = _ftype_names(model_a)
    if not cands:
        notes.append("A's file type is unknown (general.file_type): the recipe lists the upgrades "
                     "only; give llama-quantize the type A was made with")
        return None, list(rules.values())
    # the ftype whose plan is closest to A's own types
    ftype = min(cands, key=lambda f: sum(q != want.get(n) for n, q in _plan(model_a, f, ()).items()
                                         if n not in upgrades))
    for _ in range(len(names) + 1):
        plan = _plan(model_a, ftype, list(rules.values()))
        moved = [n for n in names if plan[n] != want[n]]
        if not moved:
            return ftype, list(rules.values())
        new = [n for n in moved if n not in rules]
        if not new:
            break
        for n in new:
            rules[n] = TensorTypeOverride(_pattern(n, names), want[n])
    notes.append(f"the recipe does not reproduce A's types for: {', '.join(moved)} "
                 f"(A was not made by llama-quantize {ftype} alone)")
    return ftype, list(rules.values())


# --- the search -------------------------------------------------------------------------------

def _fmt_kl(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def bisect(model_a: Any, model_b: Any, prompts: Sequence[Sequence[int]], *, source: Any = None,
           target: Target = Target("flip"), mode: str = "exact", settings: Any = None,
           max_trials: int = 64, log: Log | None = None, fixed: Sequence[str] = (),
           progress: Any = None) -> BisectResult:
    """Find a small set of A's tensors that, taken from `source` (default B), meet `target`.

    `fixed` (from `--patch GLOB=SIDE`): tensors A always takes from the source, before any trial;
    they are part of every trial and of the recipe, never pruned. `progress` (qdbg.progress) hears
    of each prompt ranked and each trial."""
    tell = progress or (lambda what, done, total: None)
    src = model_b if source is None else source
    say = log or (lambda s: None)
    if not prompts:
        raise UsageError("bisect needs at least one prompt")
    notes: list[str] = []
    rows_b = [_last_logits(Engine(model_b, mode, settings=settings), t) for t in prompts]

    def trial(chosen: Sequence[str]) -> Evaluation:
        ov = {n: src.weight(n) for n in (*fixed, *chosen)}
        rows = [_last_logits(Engine(model_a, mode, weight_overrides=ov, settings=settings), t)
                for t in prompts]
        return _evaluate(rows, rows_b)

    before = trial(())
    if fixed:
        say(f"patched from the source: {', '.join(fixed)}")
    say(f"before: {len(before.flips)}/{len(prompts)} top-1 differ, mean KL(B||A) {_fmt_kl(before.kl_mean)}")
    bytes_a = os.path.getsize(model_a.path)
    ranked: list[tuple[str, float]] = []
    local: dict[str, float | None] = {n: None for n in fixed}
    if not target.met(before):
        say("ranking tensors by local error (one attributed forward of A and the source per prompt)")
        tell("ranking tensors by local error", 0, len(prompts))
        ranked = [(n, s) for n, s in rank_candidates(model_a, src, prompts, mode, settings, notes, tell)
                  if n not in fixed]
        local.update(ranked)
    elif not fixed:
        return BisectResult(target, before, before, True, [], bytes_a, [], None, 0, 0,
                            ["the target already holds: nothing to upgrade"])
    seen: dict[frozenset, Evaluation] = {frozenset(): before}
    chosen: list[str] = []
    after, met, trials = before, target.met(before), 0
    for name, score in ([] if met else ranked):
        if trials >= max_trials:
            notes.append(f"stopped after --max-trials {max_trials}")
            break
        chosen.append(name)
        tell(f"trial {trials + 1}: +{name}", trials, min(max_trials, len(ranked)))
        after = seen[frozenset(chosen)] = trial(chosen)
        trials += 1
        met = target.met(after)
        say(f"trial {trials}: +{name} (local {score:.4g}) -> {len(after.flips)} differ, "
            f"KL {_fmt_kl(after.kl_mean)}")
        if met:
            break
    if met:  # prune: drop what the target does not need, lowest local error first
        for name in sorted(chosen, key=lambda n: local[n] or 0.0):
            rest = [n for n in chosen if n != name]
            key = frozenset(rest)
            if key not in seen:
                tell(f"pruning: -{name}", trials, trials + len(chosen))
                seen[key] = trial(rest)
                trials += 1
                say(f"trial {trials}: -{name} -> {len(seen[key].flips)} differ, "
                    f"KL {_fmt_kl(seen[key].kl_mean)}")
            if target.met(seen[key]):
                chosen, after = rest, seen[key]
    elif not ranked:
        notes.append("no tensor of A differs from the source in a way llama-quantize can set")
    ups = []
    for n in (*fixed, *chosen):
        ta, ts = model_a.tensors[n], src.tensors[n]
        ups.append(Upgrade(n, ta.qtype.name, ts.qtype.name,
                           _tensor_bytes(ts.qtype, ta.shape) - _tensor_bytes(ta.qtype, ta.shape), local[n]))
    ftype, recipe = plan_recipe(model_a, {u.tensor: Q[u.to_type] for u in ups}, notes) if met else (None, [])
    return BisectResult(target, before, after, met, ups, bytes_a, recipe, ftype, trials, len(ranked), notes)
