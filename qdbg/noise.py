"""The noise floor: how much llama.cpp's own arithmetic moves a model's top-2 margin.

A flip whose margins are within what an equally valid llama.cpp run of the *same* file would change
is not a quantization effect. Two run settings that llama.cpp users pick freely change the bits:

- the micro-batch split of the prompt (n_ubatch): each micro-batch is its own graph, so a token's
  sums depend on which tokens share its pass;
- flash attention on or off: another kernel, another summation order.

Definition (per position p of the run, base = the run with the user's settings, one model):
  t1, t2     = base's top-2 token ids at p (highest logit first, ties by lower id)
  m_s(p)     = logit_s[p, t1] - logit_s[p, t2]       for the base and each shadow run s
  floor(p)   = max over shadows s of |m_s(p) - m_base(p)|
The shadows (`shadow_settings`): the other flash-attention setting, and the other split: micro-
batches of half the prompt (ceil(n/2)), or half the user's n_ubatch when that gives the same split,
or none when the prompt is one token. Decoded tokens (`decode`) run one at a time in every run.

A flip (A and B pick different tokens at p) is *within the noise* when A's or B's margin at p is at
most floor(p): one of the two picks could change under another valid run (`within_noise`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from qdbg.numerics import DEFAULT_MODE, RunSettings


@dataclass
class NoiseFloor:
    """Per-position noise floor of one model's top-2 margin over its shadow runs."""

    floor: np.ndarray                      # [n_pos] float64, >= 0
    base_margin: np.ndarray                # [n_pos] the base run's top-1 minus top-2 logit
    shadows: list[str] = field(default_factory=list)   # labels of the shadow runs, e.g. "ubatch=4"

    def at(self, pos: int) -> float:
        return float(self.floor[pos])


def _split(n_prompt: int, n_ubatch: int) -> list[int]:
    return [min(n_ubatch, n_prompt - i) for i in range(0, n_prompt, n_ubatch)]


def shadow_settings(settings: RunSettings, n_prompt: int) -> list[tuple[str, RunSettings]]:
    """The equally valid llama.cpp settings a run is compared with (see the module docstring)."""
    out = [(f"flash_attn={'off' if settings.flash_attn else 'on'}",
            replace(settings, flash_attn=not settings.flash_attn))]
    if n_prompt > 1:
        base = _split(n_prompt, settings.n_ubatch)
        for ub in ((n_prompt + 1) // 2, max(1, settings.n_ubatch // 2)):
            if _split(n_prompt, ub) != base:
                out.append((f"ubatch={ub}", replace(settings, n_ubatch=ub)))
                break
    return out


def top2_margin(logits: np.ndarray, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(margins [n_pos], top-2 ids [n_pos, 2]): logit of id 0 minus logit of id 1 per row.

    Without `ids`, the rows' own top-2 (highest first, ties by lower id) are used and returned."""
    x = np.asarray(logits, dtype=np.float64)
    if ids is None:
        ids = np.argsort(-x, axis=1, kind="stable")[:, :2]
    rows = np.arange(x.shape[0])
    return x[rows, ids[:, 0]] - x[rows, ids[:, 1]], ids


def noise_floor(model: Any, tokens: Sequence[int], *, mode: str = DEFAULT_MODE,
                settings: RunSettings | None = None, decode: int = 0,
                base_logits: np.ndarray | None = None) -> NoiseFloor:
    """The noise floor of `model` on `tokens` (the last `decode` of them fed one at a time).

    `base_logits` are the logits of the run with `settings` if the caller already has them.
    """
    from qdbg.engine.forward import Engine

    settings = settings or RunSettings()
    toks = [int(t) for t in tokens]
    if base_logits is None:
        base_logits = Engine(model, mode, settings=settings).logits(toks, decode=decode)
    base_m, ids = top2_margin(base_logits)
    floor = np.zeros_like(base_m)
    labels = []
    for label, st in shadow_settings(settings, len(toks) - decode):
        m, _ = top2_margin(Engine(model, mode, settings=st).logits(toks, decode=decode), ids)
        floor = np.maximum(floor, np.abs(m - base_m))
        labels.append(label)
    return NoiseFloor(floor=floor, base_margin=base_m, shadows=labels)


class SplitShadow:
    """A run of `model` over `prompt` with another micro-batch split (`settings`), handing out its
    logits by absolute position as a lockstep run reaches them (qdbg.live, `--noise`): the prompt
    in its own micro-batches, then each later token alone, as the base run feeds them."""

    def __init__(self, model: Any, prompt: Sequence[int], *, mode: str = DEFAULT_MODE,
                 settings: RunSettings | None = None, weight_overrides: Any = None) -> None:
        from qdbg.engine.forward import Engine

        self.engine = Engine(model, mode, settings=settings or RunSettings(), weight_overrides=weight_overrides)
        self._chunks = self.engine.ubatches([int(t) for t in prompt])
        self._fed = 0
        self._rows: dict[int, np.ndarray] = {}

    def _run(self, chunk: Sequence[int]) -> None:
        last = None
        for last in self.engine.forward(chunk):
            pass
        assert last is not None and last.name == "result_output"
        for i, p in enumerate(last.positions):
            self._rows[p] = last.value[i]
        self._fed += len(chunk)

    def rows(self, positions: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """The shadow's logits at `positions` [len(positions), n_vocab]; `tokens` is every token the
        base run has fed so far (the shadow feeds itself from it)."""
        for p in positions:
            while p not in self._rows:
                if self._chunks:
                    self._run(self._chunks.pop(0))
                elif self._fed < len(tokens):
                    self._run([int(tokens[self._fed])])
                else:
                    raise ValueError(f"split shadow: no token at position {p}")
        return np.stack([self._rows.pop(p) for p in positions])


def margin_floor(base: np.ndarray, shadows: Sequence[np.ndarray]) -> np.ndarray:
    """Per row of `base` logits: the largest |shadow margin - base margin| over `shadows` (logits of
    the same rows), margins taken on base's own top-2 ids (the definition above)."""
    base_m, ids = top2_margin(base)
    floor = np.zeros_like(base_m)
    for sh in shadows:
        m, _ = top2_margin(sh, ids)
        floor = np.maximum(floor, np.abs(m - base_m))
    return floor


def within_noise(margin_a: float | None, margin_b: float | None, floor: float) -> bool:
    """A flip is within the noise when either side's top-2 margin is at most the floor."""
    ms = [m for m in (margin_a, margin_b) if m is not None]
    return any(m <= floor for m in ms)
