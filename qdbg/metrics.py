"""Divergence metrics between the two sides of one op: pure functions on paired arrays.

Side A is the model under test, side B the reference (the denominator of every ratio). Everything
is computed in float64 and returned as plain Python floats/ints/lists/dicts, never numpy scalars.
Non-finite results are Python floats (inf, nan); `json.dumps` writes them as Infinity/NaN.

NaN/Inf never raise: per-side stats are taken over the finite values and the rest are counted;
pairwise metrics are taken over the elements finite on *both* sides (`n_compared`), and the
skipped ones are counted (`n_nonfinite`) with the first one located (`first_nonfinite`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from qdbg.errors import ModelMismatchError, QdbgError

FIRST_N = 8
"""How many leading values of the flattened tensor `tensor_stats` reports."""

REL_EPS_FRAC = 1.0
"""max_rel floor: eps = REL_EPS_FRAC * rms(b). Elements far below the tensor's scale then count
their error relative to rms(b) rather than to themselves, so near-zero b cannot dominate; with
a smaller floor, plain quantization noise on near-zero elements (|d|/eps) would swamp a real
outlier such as one large element off by 100%."""

Pieces = Union[Sequence[Any], Mapping[int, Any], Callable[[int], Any], None]


def _arr(x: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise QdbgError(f"{what}: cannot read as a float array ({e})") from None


def _pair(a: Any, b: Any, fn: str) -> tuple[np.ndarray, np.ndarray]:
    A, B = _arr(a, f"{fn}: a"), _arr(b, f"{fn}: b")
    if A.shape != B.shape:
        raise ModelMismatchError(f"{fn}: shapes differ: a {list(A.shape)} vs b {list(B.shape)}")
    return A, B


def _norm(v: np.ndarray) -> float:
    """||v||_2: a float64 sum of squares (no BLAS: under CPU contention a multi-threaded BLAS dot
    costs milliseconds per call); rescaled by max|v| if the sum of squares overflows."""
    if v.size == 0:
        return 0.0
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        ss = float(np.sum(v * v))
    if math.isfinite(ss):
        return math.sqrt(ss)
    m = float(np.max(np.abs(v)))
    if m == 0.0 or not math.isfinite(m):
        return m
    return m * math.sqrt(float(np.sum(np.square(v / m))))


def _names(axes_names: Sequence[str] | None, ndim: int) -> list[str]:
    if axes_names is None:
        return [f"dim{i}" for i in range(ndim)]
    names = [str(n) for n in axes_names]
    if len(names) != ndim:
        raise QdbgError(f"axes_names {names} has {len(names)} names for a {ndim}-d tensor")
    return names


def _where(flat_i: int, shape: tuple[int, ...], names: list[str]) -> dict[str, Any]:
    idx = [int(i) for i in np.unravel_index(int(flat_i), shape)] if shape else []
    return {"index": idx, "at": dict(zip(names, idx))}


def tensor_stats(x: Any) -> dict[str, Any]:
    """Summary of one side's tensor. Over the finite values v (n of them):

    rms = sqrt(sum(v^2) / n); mean = sum(v) / n; std = sqrt(sum((v - mean)^2) / n) (population);
    min, max, absmax = max|v|. These are None when no value is finite. Also: shape, size,
    nan_count, inf_count (+inf and -inf), finite_count, and `first`: the first FIRST_N values
    of the flattened tensor as they are (NaN/Inf included).
    """
    flat = _arr(x, "tensor_stats").reshape(-1)
    fin = np.isfinite(flat)
    v = flat if fin.all() else flat[fin]
    out: dict[str, Any] = {
        "shape": [int(s) for s in np.shape(x)],
        "size": int(flat.size),
        "nan_count": int(np.count_nonzero(np.isnan(flat))),
        "inf_count": int(np.count_nonzero(np.isinf(flat))),
        "finite_count": int(v.size),
        "first": [float(t) for t in flat[:FIRST_N]],
    }
    keys = ("rms", "mean", "std", "min", "max", "absmax")
    if v.size == 0:
        out.update(dict.fromkeys(keys))
        return out
    m = float(np.max(np.abs(v)))
    s = v / m if m > 0 else v  # scaled copy: no overflow in squares/sums
    out.update(
        rms=m * math.sqrt(float(np.mean(np.square(s)))),
        mean=m * float(np.mean(s)),
        std=m * float(np.std(s)),
        min=float(np.min(v)),
        max=float(np.max(v)),
        absmax=m,
    )
    return out


def pair_metrics(
    a: Any,
    b: Any,
    *,
    axes_names: Sequence[str] | None = None,
    top_n: int = 10,
    input_rel_rms: float | None = None,
) -> dict[str, Any]:
    """Compare side a against reference b (same shape) over the elements finite on both sides.

    With d = a - b and ||.|| the L2 norm over the compared elements:
      max_abs  = max|d|                 mean_abs = mean|d|
      rel_rms  = ||d|| / ||b||          (0 if ||d|| = 0; inf if ||b|| = 0 < ||d||)
      sqnr     = 10*log10(||b||^2 / ||d||^2) dB  (inf if ||d|| = 0; -inf if ||b|| = 0 < ||d||)
      cos      = a.b / (||a|| ||b||)    clipped to [-1, 1]; 1.0 if both norms are 0, 0.0 if one is
      max_rel  = max_i |d_i| / (|b_i| + eps), eps = REL_EPS_FRAC * rms(b) = ||b|| / sqrt(n);
                 located by `max_rel_at` (first maximum). Where |b_i| + eps = 0 (b all zero) the
                 term is inf if d_i != 0 else 0. `rel_eps` reports eps.
      sign_flips = #{i : a_i != 0, b_i != 0, sign(a_i) != sign(b_i)}  (exact zeros never flip)
      top      = up to top_n elements with |d_i| > 0, by |d_i| descending (ties: lower flat
                 index first), each {index, at: {axis name: i}, a, b, abs_diff, rel_diff}
      amp      = rel_rms / input_rel_rms; None if input_rel_rms is None, 0, negative or
                 non-finite (an op whose inputs agree exactly is a source, not an amplifier:
                 its rel_rms says it all), or if rel_rms is None.
    Counts: n (size), n_compared, n_nonfinite (pairs with a NaN/Inf on either side, skipped),
    nan_a/inf_a/nan_b/inf_b, first_nonfinite ({index, at, a, b} or None). With no compared
    element every metric is None. `axes_names` names the axes, e.g. ("token", "channel").
    """
    A, B = _pair(a, b, "pair_metrics")
    names = _names(axes_names, A.ndim)
    if not isinstance(top_n, (int, np.integer)) or top_n < 0:
        raise QdbgError(f"pair_metrics: top_n must be a non-negative int, got {top_n!r}")
    fa, fb = A.reshape(-1), B.reshape(-1)
    ok = np.isfinite(fa) & np.isfinite(fb)
    all_ok = bool(ok.all())
    idx = None if all_ok else np.flatnonzero(ok)  # compared position -> flat index
    va, vb = (fa, fb) if all_ok else (fa[idx], fb[idx])
    n = int(va.size)
    out: dict[str, Any] = {
        "shape": list(A.shape), "n": int(fa.size), "n_compared": n, "n_nonfinite": int(fa.size) - n,
        "nan_a": int(np.count_nonzero(np.isnan(fa))), "inf_a": int(np.count_nonzero(np.isinf(fa))),
        "nan_b": int(np.count_nonzero(np.isnan(fb))), "inf_b": int(np.count_nonzero(np.isinf(fb))),
        "first_nonfinite": None,
    }
    if not all_ok:
        j = int(np.argmin(ok))
        out["first_nonfinite"] = {**_where(j, A.shape, names), "a": float(fa[j]), "b": float(fb[j])}
    keys = ("max_abs", "mean_abs", "rel_rms", "sqnr", "cos", "max_rel", "max_rel_at", "rel_eps",
            "sign_flips", "amp")
    if n == 0:
        out.update(dict.fromkeys(keys))
        out["top"] = []
        return out
    flat_of = (lambda i: int(i)) if idx is None else (lambda i: int(idx[i]))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        d = va - vb
        ad = np.abs(d)
        nd, na, nb = _norm(d), _norm(va), _norm(vb)
        rel_rms = (0.0 if nd == 0 else math.inf) if nb == 0 else nd / nb
        # 20*log10(||b||/||d||) == 10*log10(||b||^2/||d||^2) without squaring
        sqnr = math.inf if nd == 0 else (-math.inf if nb == 0 else 20.0 * math.log10(nb / nd))
        if na == 0 or nb == 0:
            cos = 1.0 if na == nb else 0.0
        else:
            cos = float(np.sum(va * vb)) / (na * nb)
            if not math.isfinite(cos):  # dot or na*nb overflowed: redo on unit vectors
                cos = float(np.sum((va / na) * (vb / nb)))
            cos = min(1.0, max(-1.0, cos))
        eps = REL_EPS_FRAC * nb / math.sqrt(n)
        rel = ad / (np.abs(vb) + eps) if eps > 0 else np.where(ad > 0, np.inf, 0.0)
        flips = int(np.count_nonzero(va * vb < 0))  # overflow keeps the sign; float32-sourced
        # values cannot underflow to 0 here (|x| >= 1.4e-45 -> |xy| >= 2e-90)
    i_rel = int(np.argmax(rel))
    j_rel = flat_of(i_rel)
    # top-n nonzero |d| desc, ties by index: all above the k-th value, then the first ties.
    k = min(int(top_n), int(np.count_nonzero(ad > 0)))
    top: list[dict[str, Any]] = []
    if k:
        t = np.partition(ad, n - k)[n - k]
        above = np.flatnonzero(ad > t)
        above = above[np.lexsort((above, -ad[above]))]
        ties = np.flatnonzero(ad == t)[: k - above.size]
        for i in np.concatenate([above, ties]):
            j = flat_of(i)
            top.append({**_where(j, A.shape, names), "a": float(va[i]), "b": float(vb[i]),
                        "abs_diff": float(ad[i]), "rel_diff": float(rel[i])})
    amp = None
    if input_rel_rms is not None:
        try:
            inp = float(input_rel_rms)
        except (TypeError, ValueError):
            raise QdbgError(f"pair_metrics: input_rel_rms {input_rel_rms!r} is not a number") from None
        amp = rel_rms / inp if math.isfinite(inp) and inp > 0 else None
    out.update(
        max_abs=float(np.max(ad)), mean_abs=float(np.mean(ad)), rel_rms=float(rel_rms),
        sqnr=float(sqnr), cos=float(cos), max_rel=float(rel[i_rel]),
        max_rel_at={**_where(j_rel, A.shape, names), "a": float(va[i_rel]), "b": float(vb[i_rel])},
        rel_eps=float(eps), sign_flips=flips, amp=None if amp is None else float(amp), top=top,
    )
    return out


def diff_profile(a: Any, b: Any, axis: int, reduce: str = "mean") -> np.ndarray:
    """|a - b| reduced over every axis but `axis`, for a sparkline: float64 array [a.shape[axis]].

    reduce: "mean" -> mean_j |d_ij|, "max" -> max_j |d_ij|, "rms" -> sqrt(mean_j d_ij^2), over
    the elements finite on both sides; a slot with none of them is NaN.
    """
    A, B = _pair(a, b, "diff_profile")
    if A.ndim == 0:
        raise QdbgError("diff_profile: a 0-d tensor has no axis to profile")
    if not isinstance(axis, (int, np.integer)) or not -A.ndim <= axis < A.ndim:
        raise QdbgError(f"diff_profile: axis {axis!r} out of range for shape {list(A.shape)}")
    if reduce not in ("mean", "max", "rms"):
        raise QdbgError(f"diff_profile: reduce must be 'mean', 'max' or 'rms', got {reduce!r}")
    with np.errstate(over="ignore", invalid="ignore"):
        ad = np.abs(A - B)
    ad = np.moveaxis(ad, int(axis), 0).reshape(A.shape[int(axis)], -1)  # [n_axis, rest]
    ok = np.isfinite(ad)
    cnt = ok.sum(axis=1)
    z = np.where(ok, ad, 0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if reduce == "max":
            r = np.where(cnt > 0, z.max(axis=1, initial=0.0), np.nan)
        elif reduce == "rms":
            r = np.where(cnt > 0, np.sqrt((z * z).sum(axis=1) / np.maximum(cnt, 1)), np.nan)
        else:
            r = np.where(cnt > 0, z.sum(axis=1) / np.maximum(cnt, 1), np.nan)
    return r.astype(np.float64)


def piece_text(pieces: Pieces, tid: int, errors: str = "replace") -> str | None:
    """The display text of token `tid` from `pieces` (a sequence, mapping or callable giving text or
    bytes; bytes decoded as UTF-8 with `errors`); None when there is none or the lookup fails. The
    one token-piece lookup of the metrics and the trace writer."""
    if pieces is None:
        return None
    try:
        p = pieces(tid) if callable(pieces) else pieces[tid]
    except (QdbgError, IndexError, KeyError, TypeError, ValueError):
        return None
    if isinstance(p, (bytes, bytearray)):
        return bytes(p).decode("utf-8", errors=errors)
    return None if p is None else str(p)


_piece = piece_text


def _log_softmax(x: np.ndarray) -> np.ndarray | None:
    """log p = x - max(x) - log(sum(exp(x - max(x)))); None if x has NaN or +inf or no finite value."""
    if np.isnan(x).any() or np.isposinf(x).any() or not np.isfinite(x).any():
        return None
    y = x - np.max(x)
    with np.errstate(under="ignore"):
        return y - math.log(float(np.sum(np.exp(y))))


def log_softmax(x: np.ndarray) -> np.ndarray | None:
    """Natural-log probabilities of one logits row (see _log_softmax); None if they do not exist."""
    return _log_softmax(np.asarray(x, dtype=np.float64))


def _topk(r: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest of r, descending, ties broken by lower id."""
    n = r.size
    t = np.partition(r, n - k)[n - k]
    above = np.flatnonzero(r > t)
    above = above[np.lexsort((above, -r[above]))]
    return np.concatenate([above, np.flatnonzero(r == t)[: k - above.size]])


def _rank(r: np.ndarray, tid: int) -> int:
    """1-based rank of id `tid` in r under the same order as _topk."""
    v = r[tid]
    return 1 + int(np.count_nonzero(r > v)) + int(np.count_nonzero(r[:tid] == v))


def _kl(lp: np.ndarray, lq: np.ndarray) -> float:
    """KL(P||Q) = sum_i p_i (log p_i - log q_i), terms with p_i = 0 are 0; clipped at 0."""
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (lp - lq), 0.0)
    return max(0.0, float(np.sum(terms)))


def logits_compare(la: Any, lb: Any, k: int = 10, pieces: Pieces = None) -> dict[str, Any]:
    """Compare next-token distributions of side A and reference B, per position.

    la, lb: [n_vocab] or [n_pos, n_vocab]. Per position p (natural logs, nats):
      log P = log_softmax(la[p]) = la - max(la) - log(sum(exp(la - max(la)))), same for Q from lb;
      a/b: {top: k x {id, piece, logit, prob}, margin, entropy}; top sorted by logit desc, ties by
           lower id; margin = logit(1st) - logit(2nd) (None if n_vocab < 2);
           entropy = -sum P log P
      top1_agree = A's top-1 id == B's top-1 id; flip = not top1_agree
      topk_overlap = |topk(A) & topk(B)| / k
      kl_ab = KL(P||Q) = sum P (log P - log Q); kl_ba = KL(Q||P)
      js = (KL(P||M) + KL(Q||M)) / 2, M = (P + Q) / 2, in [0, ln 2]
      rank_b_of_a_top1: 1-based rank in B of A's top-1 id (1 = B agrees); rank_a_of_b_top1 likewise
    NaN logits rank lowest; a side with NaN or +inf logits (or none finite) has prob, entropy,
    kl_ab, kl_ba and js None. k is capped at n_vocab. pieces maps id -> text (sequence, mapping
    or callable); None or a failed lookup gives piece None.
    Returns {n_pos, n_vocab, k, flip_positions: [p...], positions: [per-position dicts with pos]}.
    """
    A, B = _pair(la, lb, "logits_compare")
    if A.ndim not in (1, 2) or A.shape[-1] == 0:
        raise QdbgError(f"logits_compare: expected [n_vocab] or [n_pos, n_vocab], got {list(A.shape)}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise QdbgError(f"logits_compare: k must be a positive int, got {k!r}")
    A2, B2 = A.reshape(-1, A.shape[-1]), B.reshape(-1, B.shape[-1])  # [n_pos, n_vocab]
    n_vocab = A2.shape[1]
    k = min(int(k), n_vocab)
    kk = min(max(k, 2), n_vocab)
    positions: list[dict[str, Any]] = []
    for p in range(A2.shape[0]):
        sides = []
        for x in (A2[p], B2[p]):
            r = np.where(np.isnan(x), -np.inf, x)  # ranking key
            lp = _log_softmax(x)
            ids = _topk(r, kk)
            top = [{"id": int(i), "piece": _piece(pieces, int(i)), "logit": float(x[i]),
                    "prob": None if lp is None else float(np.exp(lp[i]))} for i in ids[:k]]
            with np.errstate(invalid="ignore"):  # -inf - -inf on fully masked rows is nan, not an error
                margin = float(r[ids[0]] - r[ids[1]]) if kk >= 2 else None
            ent = None
            if lp is not None:
                with np.errstate(invalid="ignore"):
                    ent = max(0.0, -float(np.sum(np.where(lp > -np.inf, np.exp(lp) * lp, 0.0))))
            sides.append((r, lp, ids, {"top": top, "margin": margin, "entropy": ent}))
        (ra, lpa, ida, da), (rb, lpb, idb, db) = sides
        kl_ab = kl_ba = js = None
        if lpa is not None and lpb is not None:
            kl_ab, kl_ba = _kl(lpa, lpb), _kl(lpb, lpa)
            lm = np.logaddexp(lpa, lpb) - math.log(2.0)
            js = min(math.log(2.0), 0.5 * (_kl(lpa, lm) + _kl(lpb, lm)))
        agree = int(ida[0]) == int(idb[0])
        positions.append({
            "pos": p, "a": da, "b": db, "top1_agree": agree, "flip": not agree,
            "topk_overlap": len(set(ida[:k].tolist()) & set(idb[:k].tolist())) / k,
            "kl_ab": kl_ab, "kl_ba": kl_ba, "js": js,
            "rank_b_of_a_top1": _rank(rb, int(ida[0])), "rank_a_of_b_top1": _rank(ra, int(idb[0])),
        })
    return {"n_pos": len(positions), "n_vocab": int(n_vocab), "k": k,
            "flip_positions": [q["pos"] for q in positions if q["flip"]], "positions": positions}
