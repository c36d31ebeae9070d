"""Findings: what a run's records say, computed once here and shown by the report, the TUI and
`run --json` — the first op over each threshold, the ops adding the most error, the first NaN/Inf, every
top-1 flip weighed against the logit error, which side stays closer to R, and where the divergence
is born (ops and tensors ranked by the local error attribution measured, `divergence_born`).

Inputs are Records in pass order (a live session's history or a trace's records); outputs are
small dataclasses with `to_json`. No formatting lives here.

The flip verdict: at a position where A's and B's top-1 differ, the *swing* is how much the gap
between the two candidates moves between the sides, (A's logit of its pick - A's logit of B's pick)
+ (B's logit of its pick - B's logit of A's pick). The logit error of the pass is e = rel_rms x
rms(B) on centred logits (rel_rms at result_output is taken on centred logits, and the rms of
centred B is its std), so a uniform shift that softmax ignores does not count. Two independent
errors of that size move a gap by about sqrt(2) e: a swing within NEAR_TIE_SIGMAS x sqrt(2) e is a
near-tie (noise can flip it), above it the flip is decisive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from qdbg.noise import within_noise
from qdbg.records import LogitsComparison, Record

THRESHOLDS = (("rel_rms", ">", 0.01), ("rel_rms", ">", 0.05), ("rel_rms", ">", 0.1),
              ("sqnr", "<", 30.0), ("sqnr", "<", 20.0))
N_AMP = 5
NEAR_TIE_SIGMAS = 3.0
WITHIN = "within llama.cpp's own variation"
"""The verdict of a flip where A's or B's top-2 margin is at most the noise floor (--noise)."""
PAIR_KEYS = ("A~B", "A~R", "B~R")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None


def _metric(rec: Record, key: str, metric: str) -> float | None:
    return _num((rec.pairs.get(key) or {}).get(metric))


@dataclass
class Crossing:
    """The first op whose `metric` for pair `key` passes a threshold (op None: never)."""

    metric: str
    op: str
    threshold: float
    key: str
    index: int | None = None
    name: str | None = None
    step: int | None = None
    value: float | None = None


@dataclass
class Amplifier:
    """An op that adds error (A vs B): `added` = rel_rms - input_rel_rms, the relative error the op
    puts on top of what came in (see `error_added`); `amp` = rel_rms / input_rel_rms is context only
    (None for a source, whose inputs agree exactly)."""

    index: int
    name: str
    step: int
    amp: float | None
    input_rel_rms: float | None
    rel_rms: float | None
    added: float | None = None


@dataclass
class NonFinite:
    """The first op holding NaN/Inf on some side: side -> (nan count, inf count)."""

    index: int
    name: str
    step: int
    counts: dict[str, tuple[int, int]]


@dataclass
class Flip:
    """One (pass, position) of A vs B at the logits: the picks, margins and the verdict.

    verdict: for a flip, WITHIN ("within llama.cpp's own variation") when the noise floor was
    measured (--noise) and A's or B's margin is at most it; else 'near-tie' when the swing is within
    NEAR_TIE_SIGMAS x sqrt(2) x the logit error (`noise`), 'decisive' above it, 'unweighable'
    without numbers. When the sides agree: 'safe' | 'fragile' (A's margin above or within those).
    `noise_floor` is the floor at this position (None without --noise). `r_top1` is R's pick when
    R ran, and `a_agrees_r`/`b_agrees_r` whether each side picks it."""

    step: int
    pos: int
    flip: bool
    a_id: int
    b_id: int
    a_piece: str | None
    b_piece: str | None
    margin_a: float | None
    margin_b: float | None
    swing: float | None
    logit_error: float | None
    noise: float | None
    verdict: str
    r_id: int | None = None
    r_piece: str | None = None
    a_agrees_r: bool | None = None
    b_agrees_r: bool | None = None
    kl_a_r: float | None = None
    kl_b_r: float | None = None
    noise_floor: float | None = None

    def because(self) -> str:
        """The verdict with its numbers, one line: 'decisive: margins A 1.2, B 0.9 above the noise
        floor 0.05; swing 2.1 > near-tie 0.6'."""
        def f(v: float | None) -> str:
            return "?" if v is None else f"{v:.3g}"

        m = f"margins A {f(self.margin_a)}, B {f(self.margin_b)}"
        fl = "" if self.noise_floor is None else f" noise floor {f(self.noise_floor)}"
        sw = f"swing {f(self.swing)} vs near-tie {f(self.noise)}"
        if self.verdict == WITHIN:
            return f"{WITHIN}: {m} <={fl}"
        if self.verdict == "decisive":
            return f"decisive: {m}" + (f" above the{fl}" if fl else "") + f"; {sw}"
        if self.verdict == "near-tie":
            return f"near-tie: {sw}" + (f"; {m} above the{fl}" if fl else "")
        return f"{self.verdict}: {m}" + (f";{fl}" if fl else "")


@dataclass
class CloserToR:
    """Which side stays closer to R. The verdict is `by_kl`: the side with the smaller mean
    KL(R||side) at the logits over every measured (pass, position) (`n_kl` of them; None on a tie
    or without logits). `best` and the counts are by rel_rms to R over the ops where both were
    measured: where along the way each side is closer, not which is closer in what it predicts."""

    best: str | None
    n_a: int
    n_b: int
    n_ops: int
    a_closer_at: list[str] = field(default_factory=list)
    b_closer_at: list[str] = field(default_factory=list)
    layer_outputs: dict[str, int] = field(default_factory=dict)
    last_layer_output: dict[str, Any] | None = None
    kl_r_a: float | None = None
    kl_r_b: float | None = None
    by_kl: str | None = None
    kl_mean_r_a: float | None = None
    kl_mean_r_b: float | None = None
    n_kl: int = 0


def crossings(records: Sequence[Record], keys: Sequence[str] | None = None) -> list[Crossing]:
    """For each threshold and pair, the first op past it."""
    keys = keys or [k for k in PAIR_KEYS if any(k in r.pairs for r in records)]
    out = []
    for metric, op, thr in THRESHOLDS:
        for k in keys:
            c = Crossing(metric, op, thr, k)
            for r in records:
                v = _metric(r, k, metric)
                if v is not None and (v > thr if op == ">" else v < thr):
                    c.index, c.name, c.step, c.value = r.index, r.name, r.step, v
                    break
            out.append(c)
    return out


def error_added(records: Sequence[Record], key: str = "A~B") -> dict[int, tuple[float, float]]:
    """Record index -> (input rel_rms, error added) for each op of pair `key` with a finite rel_rms.

    The input rel_rms is the largest over the op's inputs recorded in the same pass (as the
    debugger's `amp` takes it); an op without inputs (the embedding lookup) has 0. Error added =
    rel_rms - input rel_rms: relative error the op puts on top of what came in, so a norm whose
    tiny input error grows tenfold adds little, while a matmul whose weights differ adds its whole
    weight error. An op whose inputs were not recorded falls back on rel_rms / amp; without amp
    it is left out."""
    by_name = {(r.step, r.name): r for r in records}
    out: dict[int, tuple[float, float]] = {}
    for r in records:
        rr = _metric(r, key, "rel_rms")
        if rr is None or not math.isfinite(rr):
            continue
        ins = [_metric(by_name[(r.step, n)], key, "rel_rms") for n in r.inputs if (r.step, n) in by_name]
        ins = [v for v in ins if v is not None]
        amp = _metric(r, key, "amp")
        if ins:
            inp = max(ins)
        elif not r.inputs:
            inp = 0.0
        elif amp is not None and amp > 0 and math.isfinite(amp):
            inp = rr / amp
        else:
            continue
        if math.isfinite(inp):
            out[r.index] = (inp, rr - inp)
    return out


def amplifiers(records: Sequence[Record], n: int = N_AMP) -> list[Amplifier]:
    """The n ops that add the most error (A vs B, `error_added`), largest first, ties by index;
    only ops that add some (added > 0). Ranked by the error added, not by amp: a ratio of two
    tiny errors says little."""
    by_index = {r.index: r for r in records}
    added = [(d, i, inp) for i, (inp, d) in error_added(records).items() if d > 0]
    added.sort(key=lambda t: (-t[0], t[1]))
    out = []
    for d, i, inp in added[:n]:
        r = by_index[i]
        out.append(Amplifier(r.index, r.name, r.step, _metric(r, "A~B", "amp"), inp, _metric(r, "A~B", "rel_rms"), d))
    return out


def first_nonfinite(records: Sequence[Record]) -> NonFinite | None:
    for r in records:
        bad = {lab: (int(s.get("nan_count", 0) or 0), int(s.get("inf_count", 0) or 0)) for lab, s in r.stats.items()
               if s.get("nan_count", 0) or s.get("inf_count", 0)}
        if bad:
            return NonFinite(r.index, r.name, r.step, bad)
    return None


def logit_error(rec: Record) -> float | None:
    """rms of the A-B logit difference on centred logits: rel_rms x rms(centred B)."""
    rr = _metric(rec, "A~B", "rel_rms")
    st = rec.stats.get("B")
    centred = bool((rec.pairs.get("A~B") or {}).get("centred"))
    scale = _num((st or {}).get("std" if centred else "rms"))
    e = rr * scale if rr is not None and scale is not None else None
    return e if e is not None and math.isfinite(e) else None


def _weigh(p: Any, noise: float | None, floor: float | None = None) -> tuple[float | None, str]:
    """(swing, verdict) at one position; `floor` is llama.cpp's own variation of A's top-2 margin
    there (qdbg.noise, --noise), None when not measured."""
    at, bt = p.a.top, p.b.top
    x, y = at[0], bt[0]
    ma, mb = _num(p.a.margin), _num(p.b.margin)
    if p.flip:
        ga = next((x["logit"] - t["logit"] for t in at if t["id"] == y["id"]), ma)
        gb = next((y["logit"] - t["logit"] for t in bt if t["id"] == x["id"]), mb)
        swing = ga + gb if _num(ga) is not None and _num(gb) is not None else None
        if floor is not None and within_noise(ma, mb, floor):
            return swing, WITHIN
        if swing is None or noise is None or not math.isfinite(swing):
            return swing, "unweighable"
        return swing, "near-tie" if swing <= noise else "decisive"
    safe = (ma is not None and noise is not None and math.isfinite(ma) and ma > noise
            and (floor is None or ma > floor))
    return None, "safe" if safe else "fragile"


def flips(records: Sequence[Record], every: bool = False) -> list[Flip]:
    """Every flipped (pass, position) of A vs B, and for a pass without a flip its last position
    (the one that picks the next token), so each pass gets a verdict; `every=True` lists every
    measured position of every pass."""
    out = []
    for rec in records:
        ab = (rec.logits or {}).get("A~B")
        if not ab or not ab.positions:
            continue
        ab = LogitsComparison.from_json(ab)
        e = logit_error(rec)
        noise = None if e is None else NEAR_TIE_SIGMAS * math.sqrt(2.0) * e
        idx = range(len(ab.positions)) if every else \
            ([i for i, p in enumerate(ab.positions) if p.flip] or [len(ab.positions) - 1])
        ar = (rec.logits or {}).get("A~R")
        br = (rec.logits or {}).get("B~R")
        for i in idx:
            p = ab.positions[i]
            if not p.a.top or not p.b.top:
                continue
            floor = _num(p.noise_floor)
            swing, verdict = _weigh(p, noise, floor)
            f = Flip(rec.step, p.pos, bool(p.flip), p.a.top[0]["id"], p.b.top[0]["id"], p.a.top[0].get("piece"),
                     p.b.top[0].get("piece"), _num(p.a.margin), _num(p.b.margin), swing, e, noise, verdict)
            f.noise_floor = floor
            if ar is not None and br is not None and i < len(ar.positions) and i < len(br.positions):
                pr, qr = ar.positions[i], br.positions[i]
                if pr.b.top:
                    f.r_id, f.r_piece = pr.b.top[0]["id"], pr.b.top[0].get("piece")
                    f.a_agrees_r, f.b_agrees_r = bool(pr.top1_agree), bool(qr.top1_agree)
                    f.kl_a_r, f.kl_b_r = _num(pr.kl_ab), _num(qr.kl_ab)
            out.append(f)
    return out


def closer_to_r(records: Sequence[Record], n_names: int = 8) -> CloserToR | None:
    """Which side is closer to R; None without R."""
    both = [r for r in records if _metric(r, "A~R", "rel_rms") is not None and _metric(r, "B~R", "rel_rms") is not None]
    if not both:
        return None

    def closer(r: Record) -> str:
        a, b = _metric(r, "A~R", "rel_rms"), _metric(r, "B~R", "rel_rms")
        return "A" if a < b else ("B" if b < a else "=")  # type: ignore[operator]

    win = {r.index: closer(r) for r in both}
    na, nb = sum(w == "A" for w in win.values()), sum(w == "B" for w in win.values())
    c = CloserToR("A" if na > nb else ("B" if nb > na else None), na, nb, len(both))
    label = {r.index: r.name + (f" (pass {r.step})" if r.step else "") for r in both}
    c.a_closer_at = [label[i] for i, w in win.items() if w == "A"][:n_names]
    c.b_closer_at = [label[i] for i, w in win.items() if w == "B"][:n_names]
    lout = [r for r in both if r.layer is not None and r.name == f"l_out-{r.layer}"]
    if lout:
        lw = [win[r.index] for r in lout]
        c.layer_outputs = {"A": lw.count("A"), "B": lw.count("B"), "n": len(lout)}
        last = lout[-1]
        c.last_layer_output = {"op": last.name, "pass": last.step, "a_r": _metric(last, "A~R", "rel_rms"),
                               "b_r": _metric(last, "B~R", "rel_rms")}
    lg = next((r.logits for r in reversed(records) if r.logits and "A~R" in r.logits and "B~R" in r.logits), None)
    if lg and lg["A~R"].positions and lg["B~R"].positions:
        c.kl_r_a, c.kl_r_b = _num(lg["A~R"].positions[-1].kl_ba), _num(lg["B~R"].positions[-1].kl_ba)
    kls = [(_num(p.kl_ba), _num(q.kl_ba)) for r in records if r.logits and "A~R" in r.logits and "B~R" in r.logits
           for p, q in zip(r.logits["A~R"].positions, r.logits["B~R"].positions)]
    kls = [(x, y) for x, y in kls if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if kls:
        c.n_kl = len(kls)
        c.kl_mean_r_a, c.kl_mean_r_b = (math.fsum(k[j] for k in kls) / len(kls) for j in (0, 1))
        c.by_kl = "A" if c.kl_mean_r_a < c.kl_mean_r_b else ("B" if c.kl_mean_r_b < c.kl_mean_r_a else None)
    return c


@dataclass
class BornOp:
    """One op's share of the A-vs-B difference (attribution): `local` is what the op adds itself,
    `inherited` what came in with its inputs, `total` the op's rel_rms; all relative to ||f_B(x_B)||."""

    index: int
    name: str
    step: int
    layer: int | None
    kind: str
    weight: str | None
    type_a: str | None
    type_b: str | None
    local: float
    inherited: float | None
    total: float | None


@dataclass
class BornTensor:
    """One weight's local error: the largest over the passes of the op reading it (`op`, `step`),
    and how many passes measured it."""

    weight: str
    type_a: str | None
    type_b: str | None
    local: float
    op: str
    step: int
    n_passes: int


@dataclass
class DivergenceBorn:
    """Where the divergence is born: ops and tensors ranked by local error (largest first)."""

    ops: list[BornOp] = field(default_factory=list)
    tensors: list[BornTensor] = field(default_factory=list)
    n_measured: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def divergence_born(records: Sequence[Record], top: int | None = 10, key: str = "A~B") -> DivergenceBorn:
    """Ops (every op in every pass) and tensors (each weight's largest local error over the passes)
    ranked by local error of pair `key`, largest first, ties by index; the first `top` of each
    (None: all). Ops without attribution (local absent, or not finite) are left out; `n_measured`
    counts those with it."""
    born = []
    for r in records:
        pm = r.pairs.get(key)
        loc = _num(None if pm is None else pm.get("local"))
        if loc is None or not math.isfinite(loc):
            continue
        types = r.weight_types or {}
        born.append(BornOp(r.index, r.name, r.step, r.layer, r.kind, r.weight, types.get(key[0]), types.get(key[2]),
                           loc, _num(pm.get("inherited")), _num(pm.get("rel_rms"))))
    ops = sorted(born, key=lambda b: (-b.local, b.index))
    tensors: dict[str, BornTensor] = {}
    for b in born:
        if b.weight is None:
            continue
        t = tensors.get(b.weight)
        if t is None:
            tensors[b.weight] = BornTensor(b.weight, b.type_a, b.type_b, b.local, b.name, b.step, 1)
        else:
            t.n_passes += 1
            if b.local > t.local:
                t.local, t.op, t.step = b.local, b.name, b.step
    order = {b.weight: b.index for b in reversed(born) if b.weight}
    ranked = sorted(tensors.values(), key=lambda t: (-t.local, order[t.weight]))
    cut = slice(None) if top is None else slice(top)
    return DivergenceBorn(ops[cut], ranked[cut], len(born))


@dataclass
class Findings:
    """Everything above for one list of records."""

    nonfinite: NonFinite | None
    flips: list[Flip]
    closer_to_r: CloserToR | None
    crossings: list[Crossing]
    amplifiers: list[Amplifier]
    born: DivergenceBorn = field(default_factory=DivergenceBorn)

    @classmethod
    def of(cls, records: Sequence[Record]) -> Findings:
        return cls(first_nonfinite(records), flips(records), closer_to_r(records), crossings(records),
                   amplifiers(records), divergence_born(records))

    def flagged(self) -> set[int]:
        """Indices of the records the findings name: crossings, top amplifiers, the first NaN/Inf."""
        out = {c.index for c in self.crossings if c.index is not None}
        out.update(a.index for a in self.amplifiers)
        if self.nonfinite is not None:
            out.add(self.nonfinite.index)
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
