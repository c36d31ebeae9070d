"""The trace file's data model and schema: Trace/ModelInfo, strict JSON, and the checks that turn
a loaded manifest back into Records (every fault a one-line TraceError). See docs/TRACE_FORMAT.md.
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping


from qdbg.breakpoints import BreakpointList
from qdbg.errors import QdbgError, TraceError
from qdbg.debugger import PAIRS
from qdbg.records import (AUX_LABELS, LogitsComparison, LogitsPosition, LogitsSide, PairMetrics, Record, SideStats,
                           decode_float, to_json_value)
from qdbg.scope import ALL as SCOPE_ALL, LAST as SCOPE_LAST

FORMAT, VERSION = "qdbg-trace", 2
READS = (1, 2)
"""Versions this qdbg loads: 1 lacks interventions, the every flag and the attribution fields."""
MANIFEST = "manifest"
DEFAULT_BUDGET = 64 << 20
MAX_MANIFEST_BYTES = 1 << 30   # uncompressed JSON
MAX_DEFLATE_RATIO = 200        # manifest: uncompressed / compressed
MAX_ENTRIES = 1 << 20
POLICIES = ("full", "position", "partial", "none")
DTYPES = ("<f2", "<f4", "<f8", "<i4", "<i8")
_PAIR_KEYS = tuple(f"{x}~{y}" for x, y in PAIRS)
_LOW = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, struct.error, OverflowError,
        NotImplementedError, RuntimeError, RecursionError, KeyError, IndexError, TypeError, MemoryError)


# ---- data ------------------------------------------------------------------------------------

@dataclass
class ModelInfo:
    """What a trace keeps of one model file."""

    path: str
    name: str
    size: int | None
    sha256: str | None
    tensor_types: dict[str, str]
    config: Any   # qdbg.arch.ModelConfig

    def type_summary(self) -> str:
        """The quant mix, most common first, e.g. 'Q4_K x96, Q6_K x13, F32 x61'."""
        counts: dict[str, int] = {}
        for t in self.tensor_types.values():
            counts[t] = counts.get(t, 0) + 1
        return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


@dataclass
class Trace:
    """A session's state: models, tokens, settings, breakpoints, cursor and every op's Record.

    `records[i].values` holds the saved tensors (possibly slices); `tensor_positions[i]` says
    which token positions they cover. `tensors` describes the saving policy (see TRACE_FORMAT.md).
    """

    labels: list[str]
    models: dict[str, ModelInfo]
    prompt: list[int]
    tokens: list[int]
    prompt_text: str | None
    mode: str
    scope: str | int
    top_k: int
    driver: str
    pending: list[int | None]
    breakpoints: dict[str, Any]
    cursor: int
    records: list[Record]
    tensor_positions: dict[int, tuple[int, ...]] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=lambda: {"policy": "none"})
    pieces: dict[int, str] = field(default_factory=dict)
    created_at: str | None = None
    numerics: dict[str, Any] = field(default_factory=dict)  # mode, build profile, run settings
    qdbg_version: str = ""
    version: int = VERSION
    interventions: list[dict[str, Any]] = field(default_factory=list)  # weight patches, resyncs (v2)


# ---- strict JSON -----------------------------------------------------------------------------

def _enc(x: Any) -> Any:
    """JSON-ready copy: non-finite floats tagged, tuples as lists, numpy scalars as Python."""
    return to_json_value(x)


def _hook(pairs: list[tuple[str, Any]]) -> Any:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError(f"duplicate key in {sorted(k for k, _ in pairs)[:5]}...")
    f = decode_float(d)
    return d if f is None else f


def _no_const(s: str) -> Any:
    raise ValueError(f"non-strict JSON constant {s}")


def dumps(obj: Any) -> bytes:
    """Strict JSON bytes (the trace's manifest encoding)."""
    return json.dumps(_enc(obj), allow_nan=False, separators=(",", ":")).encode("utf-8")


def loads(data: bytes) -> Any:
    """Parse strict JSON written by `dumps` (restores non-finite floats); ValueError if malformed."""
    return json.loads(data.decode("utf-8"), object_pairs_hook=_hook, parse_constant=_no_const)


# ---- validation ------------------------------------------------------------------------------

_WORDS = {"int": "an integer", "nat": "a non-negative integer", "num": "a number", "fin": "a finite number",
          "str": "a string", "bool": "a boolean", "dict": "an object"}


def _check(v: Any, spec: str, where: str) -> Any:
    """Type-check `v` against `spec`: int nat num fin str bool dict any, [x] list, {x} str-keyed
    dict, trailing ? allows None. Returns v."""
    if spec.endswith("?"):
        if v is None:
            return v
        spec = spec[:-1]
    if spec[0] in "[{":
        inner = spec[1:-1]
        if spec[0] == "[":
            if not isinstance(v, list):
                raise TraceError(f"manifest: {where} should be a list, got {type(v).__name__}")
            for i, x in enumerate(v):
                _check(x, inner, f"{where}[{i}]")
        else:
            if not isinstance(v, dict):
                raise TraceError(f"manifest: {where} should be an object, got {type(v).__name__}")
            for k, x in v.items():
                _check(x, inner, f"{where}.{k}")
        return v
    isnum = isinstance(v, (int, float)) and not isinstance(v, bool)
    ok = {"int": isinstance(v, int) and not isinstance(v, bool),
          "nat": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
          "num": isnum, "fin": isnum and math.isfinite(v), "str": isinstance(v, str),
          "bool": isinstance(v, bool), "dict": isinstance(v, dict), "any": True}[spec]
    if not ok:
        raise TraceError(f"manifest: {where} should be {_WORDS[spec]}, got {str(_enc(v))[:60]!r}")
    return v


def _fields(d: Any, schema: Mapping[str, str], where: str, required: tuple[str, ...] = ()) -> dict:
    _check(d, "dict", where)
    for k in required:
        if k not in d:
            raise TraceError(f"manifest: {where} lacks '{k}'")
    for k, spec in schema.items():
        if k in d:
            _check(d[k], spec, f"{where}.{k}")
    return d


TOP = {"format": "str", "version": "int", "qdbg_version": "str", "created_at": "str?", "labels": "[str]",
       "models": "{dict}", "prompt_text": "str?", "prompt": "[nat]", "tokens": "[nat]", "pieces": "{str}",
       "mode": "str", "scope": "any", "top_k": "nat", "driver": "str", "pending": "[nat?]",
       "breakpoints": "dict", "cursor": "int", "tensors": "dict", "n_records": "nat", "n_tensors": "nat",
       "records": "[dict]", "interventions": "[dict]"}
TOP_REQUIRED = tuple(k for k in TOP if k != "interventions")
MODEL = {"path": "str", "name": "str", "size": "nat?", "sha256": "str?", "tensor_types": "{str}",
         "config": "dict"}
TENSORS = {"policy": "str", "budget_bytes": "nat", "total_bytes": "nat", "saved_bytes": "nat",
           "n_records_with_tensors": "nat", "note": "str"}
REC = {"index": "nat", "name": "str", "kind": "str", "layer": "int?", "step": "nat", "positions": "[nat]",
       "axes": "[str]", "inputs": "[str]", "weight": "str?", "weight_types": "{str?}", "ggml_name": "str?",
       "stats": "{dict}", "pairs": "{dict}", "logits": "{dict}?", "tensor_positions": "[nat]?",
       "tensors": "{dict}", "interventions": "[str]"}
REC_REQUIRED = tuple(k for k in REC if k != "interventions")
STATS = SideStats.spec()
PAIR = PairMetrics.spec()
LOGITS = LogitsComparison.spec()
LPOS = LogitsPosition.spec()
LSIDE = LogitsSide.spec()
LTOP = {"id": "nat", "piece": "str?", "logit": "num", "prob": "num?"}
TENSOR = {"entry": "str", "shape": "[nat]", "dtype": "str"}
# one element of a pairwise comparison: `top` entries, `max_rel_at`, `first_nonfinite`
ELEM = {"index": "[nat]", "at": "{nat}", "a": "num", "b": "num", "abs_diff": "num", "rel_diff": "num?"}


def _config_from(d: dict, where: str) -> Any:
    from qdbg.arch.config import ModelConfig

    kw: dict[str, Any] = {}
    for f in dataclasses.fields(ModelConfig):
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TraceError(f"manifest: {where} lacks '{f.name}'")
            continue
        v, t, w = d[f.name], str(f.type), f"{where}.{f.name}"
        if t == "int":
            _check(v, "nat", w)
        elif t == "float":
            v = float(_check(v, "fin", w))
        elif t in ("bool", "str", "dict"):
            _check(v, t, w)
        elif t.startswith("tuple"):
            v = tuple(_check(v, "[bool]" if "bool" in t else "[any]", w))
        elif t.startswith("Mapping"):
            _check(v, "dict", w)
        kw[f.name] = v
    try:
        return ModelConfig(**kw)
    except (QdbgError, TypeError, ValueError) as e:
        raise TraceError(f"manifest: {where}: {e}") from None


def _check_metrics(r: dict, labels: list[str], where: str) -> None:
    for lab, st in r["stats"].items():
        if lab not in labels:
            raise TraceError(f"manifest: {where}.stats has unknown side '{lab}'")
        _fields(st, STATS, f"{where}.stats.{lab}")
    for key, pm in {**r["pairs"], **(r.get("logits") or {})}.items():
        if key not in _PAIR_KEYS or any(s not in labels for s in key.split("~")):
            raise TraceError(f"manifest: {where} has metrics for unknown pair '{key}'")
    for lab, st in r["stats"].items():
        _fields(st, STATS, f"{where}.stats.{lab}", SideStats.REQUIRED)
    for key, pm in r["pairs"].items():
        w = f"{where}.pairs.{key}"
        _fields(pm, PAIR, w, PairMetrics.REQUIRED)
        shape = pm["shape"]
        elems = [(f"{w}.top[{j}]", e, ("index", "at", "a", "b", "abs_diff")) for j, e in enumerate(pm["top"])]
        elems += [(f"{w}.{k}", pm[k], ("index", "at", "a", "b")) for k in ("max_rel_at", "first_nonfinite")
                  if pm[k] is not None]
        for ew, e, req in elems:
            _fields(e, ELEM, ew, req)
            if len(e["index"]) != len(shape) or any(i >= n for i, n in zip(e["index"], shape)):
                raise TraceError(f"manifest: {ew}.index {e['index']} is outside the shape {shape}")
            if len(e["at"]) != len(shape):
                raise TraceError(f"manifest: {ew}.at names {len(e['at'])} axes, the shape has {len(shape)}")
    n_pos = {len(lg.get("positions") or []) for lg in (r.get("logits") or {}).values() if isinstance(lg, dict)}
    if len(n_pos) > 1:
        raise TraceError(f"manifest: {where}.logits compare different numbers of positions {sorted(n_pos)}")
    for key, lg in (r.get("logits") or {}).items():
        w = f"{where}.logits.{key}"
        _fields(lg, LOGITS, w, ("positions",))
        for i, p in enumerate(lg["positions"]):
            _fields(p, LPOS, f"{w}.positions[{i}]", ("a", "b"))
            for s in ("a", "b"):
                _fields(p[s], LSIDE, f"{w}.positions[{i}].{s}", ("top",))
                for j, t in enumerate(p[s]["top"]):
                    _fields(t, LTOP, f"{w}.positions[{i}].{s}.top[{j}]", ("id", "logit"))


def _record_from(r: Any, i: int, tr: Trace, refs: list) -> Record:
    w = f"records[{i}]"
    _fields(r, REC, w, REC_REQUIRED)
    if r["index"] != i:
        raise TraceError(f"manifest: {w}.index is {r['index']}, expected {i}")
    if any(p >= len(tr.tokens) for p in r["positions"]):
        raise TraceError(f"manifest: {w}.positions {r['positions'][:8]} go past the {len(tr.tokens)} tokens")
    _check_metrics(r, tr.labels, w)
    rec = Record(index=i, name=r["name"], kind=r["kind"], layer=r["layer"], step=r["step"],
                 positions=tuple(r["positions"]), axes=tuple(r["axes"]), inputs=tuple(r["inputs"]),
                 weight=r["weight"], weight_types=dict(r["weight_types"]), ggml_name=r["ggml_name"],
                 interventions=list(r.get("interventions", [])))
    rec.set_metrics(r["stats"], r["pairs"], r["logits"])
    tp = r["tensor_positions"]
    if r["tensors"]:
        if tp is None or not set(tp) <= set(rec.positions) or len(set(tp)) != len(tp):
            raise TraceError(f"manifest: {w}.tensor_positions {tp} is not a subset of its positions")
        tr.tensor_positions[i] = tuple(tp)
    for lab, t in r["tensors"].items():
        tw = f"{w}.tensors.{lab}"
        _fields(t, TENSOR, tw, tuple(TENSOR))
        if lab not in tr.labels and lab not in AUX_LABELS:  # aux: attribution/noise values (v2)
            raise TraceError(f"manifest: {tw}: unknown side")
        if t["dtype"] not in DTYPES:
            raise TraceError(f"manifest: {tw}.dtype {t['dtype']!r} is not one of {', '.join(DTYPES)}")
        if len(t["shape"]) != len(rec.axes):
            raise TraceError(f"manifest: {tw}.shape {t['shape']} does not match axes {list(rec.axes)}")
        if "token" in rec.axes and t["shape"][rec.axes.index("token")] != len(tp):
            raise TraceError(f"manifest: {tw}.shape {t['shape']} does not cover its {len(tp)} positions")
        refs.append((rec, lab, t["entry"] + ".npy", tuple(t["shape"]), t["dtype"]))
    return rec


def _trace_from(m: Any) -> tuple[Trace, list]:
    _check(m, "dict", "manifest")
    if m.get("format") != FORMAT:
        raise TraceError(f"not a qdbg trace (format {str(m.get('format'))[:40]!r}, expected {FORMAT!r})")
    if m.get("version") not in READS or isinstance(m.get("version"), bool):
        raise TraceError(f"unsupported trace version {str(m.get('version'))[:20]} "
                         f"(this qdbg reads {', '.join(map(str, READS))})")
    _fields(m, TOP, "manifest", TOP_REQUIRED)
    numerics = m.get("numerics", {"mode": m["mode"]})  # optional: traces before exact mode lack it
    _check(numerics, "dict", "manifest.numerics")
    labels = m["labels"]
    if labels[:2] != ["A", "B"] or labels not in (["A", "B"], ["A", "B", "R"]):
        raise TraceError(f"manifest: labels {labels[:4]} should be [A, B] or [A, B, R]")
    if sorted(m["models"]) != sorted(labels):
        raise TraceError(f"manifest: models {sorted(m['models'])[:4]} do not match labels {labels}")
    models = {}
    for lab in labels:
        d = _fields(m["models"][lab], MODEL, f"models.{lab}", tuple(MODEL))
        sha = d["sha256"]
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise TraceError(f"manifest: models.{lab}.sha256 is not 64 hex digits")
        models[lab] = ModelInfo(d["path"], d["name"], d["size"], sha, dict(d["tensor_types"]),
                                _config_from(d["config"], f"models.{lab}.config"))
    n_vocab = models["A"].config.n_vocab
    prompt, tokens = m["prompt"], m["tokens"]
    if not prompt or tokens[:len(prompt)] != prompt or any(t >= n_vocab for t in tokens):
        raise TraceError(f"manifest: prompt/tokens are empty, inconsistent or past the vocab ({n_vocab})")
    scope = m["scope"]
    if scope not in (SCOPE_LAST, SCOPE_ALL):
        _check(scope, "nat", "scope")
    try:
        pieces = {int(k): v for k, v in m["pieces"].items()}
    except ValueError:
        raise TraceError("manifest: pieces keys should be token ids") from None
    BreakpointList.from_json(m["breakpoints"])  # TraceError if malformed
    _fields(m["tensors"], TENSORS, "tensors", ("policy",))
    if m["tensors"]["policy"] not in POLICIES:
        raise TraceError(f"manifest: tensors.policy {m['tensors']['policy']!r} not one of {POLICIES}")
    if m["n_records"] != len(m["records"]) or not -1 <= m["cursor"] < len(m["records"]):
        raise TraceError(f"manifest: n_records {m['n_records']} / cursor {m['cursor']} do not match "
                         f"the {len(m['records'])} records")
    if m["driver"] not in ("a", "b", "text"):
        raise TraceError(f"manifest: driver {m['driver']!r} should be a, b or text")
    tr = Trace(labels=list(labels), models=models, prompt=list(prompt), tokens=list(tokens),
               prompt_text=m["prompt_text"], mode=m["mode"], scope=scope, top_k=m["top_k"],
               driver=m["driver"], pending=list(m["pending"]), breakpoints=m["breakpoints"],
               cursor=m["cursor"], records=[], tensors=m["tensors"], pieces=pieces,
               created_at=m["created_at"], qdbg_version=m["qdbg_version"], version=m["version"],
               numerics=numerics, interventions=list(m.get("interventions", [])))
    refs: list = []
    tr.records = [_record_from(r, i, tr, refs) for i, r in enumerate(m["records"])]
    if m["n_tensors"] != len(refs):
        raise TraceError(f"manifest: n_tensors {m['n_tensors']} but {len(refs)} tensors are listed")
    return tr, refs


