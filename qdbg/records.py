"""Typed values of a debugging session: one op's Record, its per-side stats, pair metrics and
logits comparison, and the one JSON encoding of non-finite floats.

Every metric field is declared once here, with its JSON type (the trace schema checks it), the
breakpoint variable it feeds (qdbg.expr builds VARIABLES from these declarations), and the
version of the trace format that introduced it. `to_json`/`from_json` are the only conversions;
`run --json`, the trace manifest and the report all go through them.

The metric classes also answer `get(name)` and `[name]` like the dicts they replace, so a reader
written against the old dicts keeps working; new code uses attributes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping, MutableMapping

import numpy as np

# ---- one encoding of non-finite floats ------------------------------------------------------

NONFINITE_KEY = "$float"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode_float(x: float) -> Any:
    """A float as strict JSON: itself if finite, else {"$float": "nan" | "inf" | "-inf"}."""
    if math.isfinite(x):
        return x
    return {NONFINITE_KEY: "nan" if x != x else ("inf" if x > 0 else "-inf")}


def decode_float(d: Mapping[str, Any]) -> float | None:
    """The float a one-key {"$float": ...} object stands for; None if `d` is not one."""
    if len(d) == 1 and NONFINITE_KEY in d:
        v = d[NONFINITE_KEY]
        if isinstance(v, str) and v in _NONFINITE:
            return _NONFINITE[v]
        raise ValueError(f"bad {NONFINITE_KEY} value {v!r}")
    return None


def to_json_value(x: Any) -> Any:
    """A JSON-ready copy of `x` (the one strict encoding used by traces and `--json` output):
    typed values via their to_json, non-finite floats tagged, tuples as lists, numpy as Python."""
    if isinstance(x, float):
        return encode_float(x)
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, Typed):
        return to_json_value(x.to_json())
    if isinstance(x, Mapping):
        return {str(k): to_json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json_value(v) for v in x]
    if isinstance(x, np.generic):
        return to_json_value(x.item())
    if isinstance(x, np.ndarray):
        return to_json_value(x.tolist())
    if hasattr(x, "to_json"):
        return to_json_value(x.to_json())
    return str(x)


# ---- declared fields --------------------------------------------------------------------------

def metric(spec: str, var: str | None = None, doc: str = "", since: int = 1, typ: Any = None,
           default: Any = None) -> Any:
    """A metric field: JSON `spec` (see qdbg.trace_schema._check), the breakpoint variable `var`
    it feeds (with `doc`), the trace version that introduced it, and a nested type if any."""
    return field(default=default, metadata={"spec": spec, "var": var, "doc": doc, "since": since, "typ": typ})


class Typed:
    """Base of the metric records: declared fields, to_json/from_json, dict-style reading."""

    REQUIRED: ClassVar[tuple[str, ...]] = ()   # keys a version-1 trace must carry

    @classmethod
    def spec(cls) -> dict[str, str]:
        """Field name -> JSON type spec, for the trace schema."""
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def variables(cls) -> dict[str, tuple[str, str]]:
        """Breakpoint variable -> (field name, description) for fields that feed one."""
        return {f.metadata["var"]: (f.name, f.metadata["doc"]) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.metadata.get("var")}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, Typed):
                v = v.to_json()
            elif isinstance(v, list) and v and isinstance(v[0], Typed):
                v = [x.to_json() for x in v]
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Any:
        """Rebuild from `to_json` output (or the dicts of qdbg.metrics); unknown keys are dropped,
        missing ones take their defaults."""
        if isinstance(d, cls):
            return d
        kw = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in d:
                continue
            v, typ = d[f.name], f.metadata.get("typ")
            if typ is not None and v is not None:
                v = [typ.from_json(x) for x in v] if isinstance(v, list) else typ.from_json(v)
            kw[f.name] = v
        return cls(**kw)

    # dict-style reading, for code written against the dicts these records replace
    def get(self, key: str, default: Any = None) -> Any:
        v = getattr(self, key, None) if key in self._names() else None
        return default if v is None else v

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    def keys(self) -> Iterator[str]:
        return iter(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_NAMES")
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            cls._NAMES = names  # type: ignore[attr-defined]
        return names


# ---- per-side stats ---------------------------------------------------------------------------

@dataclass
class SideStats(Typed):
    """One side's tensor summary (qdbg.metrics.tensor_stats), over its finite values."""

    shape: list = metric("[nat]")
    size: int = metric("nat", default=0)
    nan_count: int = metric("nat", default=0)
    inf_count: int = metric("nat", default=0)
    finite_count: int = metric("nat", default=0)
    first: list = metric("[num]")
    rms: float | None = metric("num?")
    mean: float | None = metric("num?")
    std: float | None = metric("num?")
    min: float | None = metric("num?")
    max: float | None = metric("num?")
    absmax: float | None = metric("num?")

    REQUIRED: ClassVar[tuple[str, ...]] = ("shape", "size", "nan_count", "inf_count", "finite_count", "first",
                                           "rms", "mean", "std", "min", "max", "absmax")


# ---- pair metrics -----------------------------------------------------------------------------

@dataclass
class PairMetrics(Typed):
    """Side x against reference y over the elements finite on both (qdbg.metrics.pair_metrics).

    At `result_output` the logits are compared *centred* (each row minus its mean over the
    vocabulary), so a uniform shift that softmax ignores counts for nothing; `centred` says so.
    `local` and `inherited` split the difference (qdbg.attribution: what this op adds itself, and
    what it carried in with its inputs; both relative to ||y||, so with their arrays
    local + inherited = a - y); `noise` is A against a shadow of A with the other flash-attention
    setting (`--noise`). Absent (None) where not measured.
    """

    shape: list = metric("[nat]")
    n: int = metric("nat", default=0)
    n_compared: int = metric("nat", default=0)
    n_nonfinite: int = metric("nat", default=0)
    nan_a: int = metric("nat", default=0)
    inf_a: int = metric("nat", default=0)
    nan_b: int = metric("nat", default=0)
    inf_b: int = metric("nat", default=0)
    first_nonfinite: dict | None = metric("dict?")
    rel_rms: float | None = metric("num?", "rel_rms", "||a-b|| / ||b|| (centred logits at result_output)")
    sqnr: float | None = metric("num?", "sqnr", "10*log10(||b||^2 / ||a-b||^2) dB, inf when identical")
    cos: float | None = metric("num?", "cos", "cosine similarity a.b / (||a|| ||b||)")
    max_abs: float | None = metric("num?", "max_abs", "max |a-b|")
    mean_abs: float | None = metric("num?", "mean_abs", "mean |a-b|")
    max_rel: float | None = metric("num?", "max_rel", "max |a-b| / (|b| + rms(b))")
    max_rel_at: dict | None = metric("dict?")
    rel_eps: float | None = metric("num?")
    sign_flips: int | None = metric("nat?", "sign_flips", "count of sign(a) != sign(b), zeros ignored")
    amp: float | None = metric("num?", "amp", "rel_rms / rel_rms of the op's inputs")
    top: list = metric("[dict]")
    centred: bool | None = metric("bool?", since=2)
    local: float | None = metric("num?", "local", "||f_A(x_B) - f_B(x_B)|| / ||f_B(x_B)||: the error this op adds itself", 2)
    inherited: float | None = metric("num?", "inherited",
                                     "||f_A(x_A) - f_A(x_B)|| / ||f_B(x_B)||: the error carried in with the inputs", 2)
    noise: float | None = metric("num?", "noise",
                                 "rel_rms of A against A with the other flash-attention setting (--noise; absent otherwise)", 2)

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "shape", "n", "n_compared", "n_nonfinite", "nan_a", "inf_a", "nan_b", "inf_b", "first_nonfinite",
        "max_abs", "mean_abs", "rel_rms", "sqnr", "cos", "max_rel", "max_rel_at", "rel_eps", "sign_flips",
        "amp", "top")

    def __post_init__(self) -> None:
        if self.shape is None:
            self.shape = []
        if self.top is None:
            self.top = []

    @property
    def nonfinite(self) -> tuple[bool, bool]:
        """(any NaN or Inf on either side, any Inf on either side)."""
        inf = self.inf_a + self.inf_b > 0
        return inf or self.nan_a + self.nan_b > 0, inf


# ---- logits comparison ------------------------------------------------------------------------

@dataclass
class LogitsSide(Typed):
    """One side's next-token view at one position: top-k {id, piece, logit, prob}, margin, entropy."""

    top: list = metric("[dict]")
    margin: float | None = metric("num?")
    entropy: float | None = metric("num?")

    REQUIRED: ClassVar[tuple[str, ...]] = ("top",)

    def __post_init__(self) -> None:
        if self.top is None:
            self.top = []

    @property
    def top1(self) -> dict | None:
        return self.top[0] if self.top else None


@dataclass
class LogitsPosition(Typed):
    """The comparison of two sides' distributions at one absolute token position."""

    pos: int = metric("nat", default=0)
    a: LogitsSide = metric("dict", typ=LogitsSide)
    b: LogitsSide = metric("dict", typ=LogitsSide)
    flip: bool = metric("bool", "flip", "top-1 token differs (logits only)", default=False)
    top1_agree: bool = metric("bool", "top1_agree", "top-1 token agrees (logits only)", default=True)
    kl_ab: float | None = metric("num?", "kl_ab", "KL(A||B) in nats (logits only)")
    kl_ba: float | None = metric("num?", "kl_ba", "KL(B||A) in nats (logits only)")
    js: float | None = metric("num?", "js", "Jensen-Shannon divergence in nats (logits only)")
    topk_overlap: float | None = metric("num", "topk_overlap", "|topk(A) & topk(B)| / k (logits only)")
    rank_b_of_a_top1: int | None = metric("nat", "rank", "1-based rank in B of A's top-1 (logits only)")
    rank_a_of_b_top1: int | None = metric("nat")
    noise_floor: float | None = metric("num?", "noise_floor",
                                       "how far llama.cpp's own variation moves A's top-2 margin here (--noise; logits only)",
                                       2)

    REQUIRED: ClassVar[tuple[str, ...]] = ("a", "b")
    SIDE_VARIABLES: ClassVar[dict[str, tuple[str, str]]] = {
        "margin_a": ("a", "A's top-1 minus top-2 logit (logits only)"),
        "margin_b": ("b", "B's top-1 minus top-2 logit (logits only)"),
    }

    def __post_init__(self) -> None:
        self.a = self.a if self.a is not None else LogitsSide()
        self.b = self.b if self.b is not None else LogitsSide()


@dataclass
class LogitsComparison(Typed):
    """qdbg.metrics.logits_compare over the rows a scope keeps, positions made absolute."""

    n_pos: int = metric("nat", default=0)
    n_vocab: int = metric("nat", default=0)
    k: int = metric("nat", default=0)
    flip_positions: list = metric("[nat]")
    positions: list = metric("[dict]", typ=LogitsPosition)
    noise_shadows: list | None = metric("[str]?", since=2)

    REQUIRED: ClassVar[tuple[str, ...]] = ("positions",)

    def __post_init__(self) -> None:
        self.positions = self.positions or []
        self.flip_positions = self.flip_positions or []

    @property
    def last(self) -> LogitsPosition | None:
        return self.positions[-1] if self.positions else None


# ---- one op across the sides ------------------------------------------------------------------

AUX_CROSS = "A.xB"          # A's op on B's inputs (attribution)
AUX_SHADOW = "A.shadow"     # the flash-attention shadow of A (noise)
AUX_SPLIT = "A.split"       # logits of the micro-batch-split shadow of A (noise, result_output only)
AUX_LABELS = (AUX_CROSS, AUX_SHADOW, AUX_SPLIT)

@dataclass(eq=False)
class Record:
    """One op across all sides: identity, values, per-side stats and pairwise metrics.

    `stats` maps a side (A, B, R) to SideStats; `pairs` and `logits` map a pair key ("A~B",
    "A~R", "B~R") to PairMetrics and (at result_output) LogitsComparison. `interventions` names
    what the live source did to this op (e.g. "resync A<-B"), empty when nothing. `aux` holds
    values the live source computed beside the sides' (AUX_CROSS, AUX_SHADOW, AUX_SPLIT), which
    the debugger turns into PairMetrics' local/inherited/noise and the logits' noise floor.
    In a debugger's history both are qdbg.history.Arrays (some values may be spilled to disk and
    come back, read-only, on access); elsewhere plain dicts.
    """

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
    values: MutableMapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    stats: dict[str, SideStats] = field(default_factory=dict, repr=False)
    pairs: dict[str, PairMetrics] = field(default_factory=dict, repr=False)
    logits: dict[str, LogitsComparison] | None = field(default=None, repr=False)
    interventions: list[str] = field(default_factory=list)
    aux: MutableMapping[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def pair(self) -> PairMetrics:
        """The A vs B metrics (B is the reference of the ratios); empty before measuring."""
        return self.pairs.get("A~B") or PairMetrics()

    def metrics_json(self) -> dict[str, Any]:
        """stats/pairs/logits as plain JSON-ready dicts (floats still raw)."""
        def js(v: Any) -> Any:
            return v.to_json() if isinstance(v, Typed) else dict(v)

        return {"stats": {k: js(v) for k, v in self.stats.items()},
                "pairs": {k: js(v) for k, v in self.pairs.items()},
                "logits": None if self.logits is None else {k: js(v) for k, v in self.logits.items()}}

    def set_metrics(self, stats: Mapping[str, Any], pairs: Mapping[str, Any], logits: Mapping[str, Any] | None) -> None:
        """Store metrics given as dicts or typed values, as typed values."""
        self.stats = {k: SideStats.from_json(v) for k, v in stats.items()}
        self.pairs = {k: PairMetrics.from_json(v) for k, v in pairs.items()}
        self.logits = None if logits is None else {k: LogitsComparison.from_json(v) for k, v in logits.items()}
