"""Ranking and summing up scan results: severity order and the `summary` block of --json."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from qdbg.scan.work import PromptResult

TOP_N = 5


def severity(r: PromptResult) -> tuple:
    """Sort key, most severe first: prompts with more flips, then higher mean KL(A||B); prompts
    that could not be scanned last, in file order."""
    if r.error is not None:
        return (1, 0, 0.0, r.index)
    return (0, -len(r.flips), -(r.kl_ab_mean or 0.0), r.index)


def rank(results: Iterable[PromptResult]) -> list[PromptResult]:
    return sorted(results, key=severity)


def summarize(results: list[PromptResult], n_prompts: int, interrupted: bool = False) -> dict[str, Any]:
    """Counts over the scanned prompts; KL means are over all their positions (token-weighted).

    first_over_ops / first_over_tensors: the ops and weight tensors most often first over the
    rel_rms threshold, as [[name, count], ...] (at most TOP_N, most frequent first)."""
    ok = [r for r in results if r.error is None]
    n_pos = sum(r.n_tokens + r.n_gen for r in ok)
    kl_sum = sum((r.kl_ab_mean or 0.0) * (r.n_tokens + r.n_gen) for r in ok)
    ops = Counter(r.first_op_over for r in ok if r.first_op_over)
    tensors = Counter(r.first_tensor_over for r in ok if r.first_tensor_over)
    out: dict[str, Any] = {
        "n_prompts": n_prompts,
        "n_scanned": len(ok),
        "n_errors": len(results) - len(ok),
        "interrupted": interrupted,
        "prompts_with_flip": sum(1 for r in ok if r.flips),
        "flipped_positions": sum(len(r.flips) for r in ok),
        "positions": n_pos,
        "kl_ab_mean": kl_sum / n_pos if n_pos else None,
        "kl_ab_max": max((r.kl_ab_max for r in ok if r.kl_ab_max is not None), default=None),
        "first_over_ops": [[k, v] for k, v in ops.most_common(TOP_N)],
        "first_over_tensors": [[k, v] for k, v in tensors.most_common(TOP_N)],
    }
    if any(r.ref_closer for r in ok):
        c = Counter(r.ref_closer for r in ok if r.ref_closer)
        out["ref_closer"] = {k: c.get(k, 0) for k in ("A", "B", "tie")}
    if any(r.n_within_noise is not None for r in ok):
        out["flips_within_noise"] = sum(r.n_within_noise or 0 for r in ok)
    return out
