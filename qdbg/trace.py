"""Traces: a session saved to one file, loaded back with checks, and replayed without the models.

A trace is a zip in numpy's `.npz` layout (readable with `np.load(allow_pickle=False)` and `json`):
`manifest.npy` is the UTF-8 JSON manifest as a uint8 array; every saved tensor is one stored
(uncompressed) `.npy` entry, `A/<step>/<op>` etc. Non-finite floats are written as
{"$float": "nan" | "inf" | "-inf"} so the JSON stays strict. docs/TRACE_FORMAT.md is the spec.

Loading checks everything (format, version, types, counts, sizes claimed by the zip and by the
npy headers against the manifest) before allocating, and turns any fault into one-line TraceError.
ReplaySession hands the recorded ops out through the Session verbs; nothing is computed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qdbg.breakpoints import BreakpointList
from qdbg.errors import QdbgError, TraceError, UsageError
from qdbg.session import PAIRS, SCOPE_ALL, SCOPE_LAST, Record, Session
from qdbg.util import atomic_write

FORMAT, VERSION = "qdbg-trace", 1
MANIFEST = "manifest"
DEFAULT_BUDGET = 64 << 20
MAX_MANIFEST_BYTES = 1 << 30   # uncompressed JSON
MAX_DEFLATE_RATIO = 200        # manifest: uncompressed / compressed
MAX_ENTRIES = 1 << 20
POLICIES = ("full", "position", "partial", "none")
DTYPES = ("<f2", "<f4", "<f8", "<i4", "<i8")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
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
    qdbg_version: str = ""
    version: int = VERSION


# ---- strict JSON -----------------------------------------------------------------------------

def _enc(x: Any) -> Any:
    """JSON-ready copy: non-finite floats tagged, tuples as lists, numpy scalars as Python."""
    if isinstance(x, float):
        return x if math.isfinite(x) else {"$float": "nan" if x != x else ("inf" if x > 0 else "-inf")}
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, Mapping):
        return {str(k): _enc(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_enc(v) for v in x]
    if isinstance(x, np.generic):
        return _enc(x.item())
    if isinstance(x, np.ndarray):
        return _enc(x.tolist())
    return str(x)


def _hook(pairs: list[tuple[str, Any]]) -> Any:
    if len(pairs) == 1 and pairs[0][0] == "$float":
        v = pairs[0][1]
        if not isinstance(v, str) or v not in _NONFINITE:
            raise ValueError(f"bad $float value {v!r}")
        return _NONFINITE[v]
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError(f"duplicate key in {sorted(k for k, _ in pairs)[:5]}...")
    return d


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
       "records": "[dict]"}
MODEL = {"path": "str", "name": "str", "size": "nat?", "sha256": "str?", "tensor_types": "{str}",
         "config": "dict"}
TENSORS = {"policy": "str", "budget_bytes": "nat", "total_bytes": "nat", "saved_bytes": "nat",
           "n_records_with_tensors": "nat", "note": "str"}
REC = {"index": "nat", "name": "str", "kind": "str", "layer": "int?", "step": "nat", "positions": "[nat]",
       "axes": "[str]", "inputs": "[str]", "weight": "str?", "weight_types": "{str?}", "ggml_name": "str?",
       "stats": "{dict}", "pairs": "{dict}", "logits": "{dict}?", "tensor_positions": "[nat]?",
       "tensors": "{dict}"}
STATS = {"shape": "[nat]", "size": "nat", "nan_count": "nat", "inf_count": "nat", "finite_count": "nat",
         "first": "[num]", "rms": "num?", "mean": "num?", "std": "num?", "min": "num?", "max": "num?",
         "absmax": "num?"}
PAIR = {"shape": "[nat]", "n": "nat", "n_compared": "nat", "n_nonfinite": "nat", "nan_a": "nat",
        "inf_a": "nat", "nan_b": "nat", "inf_b": "nat", "first_nonfinite": "dict?", "max_abs": "num?",
        "mean_abs": "num?", "rel_rms": "num?", "sqnr": "num?", "cos": "num?", "max_rel": "num?",
        "max_rel_at": "dict?", "rel_eps": "num?", "sign_flips": "nat?", "amp": "num?", "top": "[dict]"}
LOGITS = {"n_pos": "nat", "n_vocab": "nat", "k": "nat", "flip_positions": "[nat]", "positions": "[dict]"}
LPOS = {"pos": "nat", "a": "dict", "b": "dict", "top1_agree": "bool", "flip": "bool", "topk_overlap": "num",
        "kl_ab": "num?", "kl_ba": "num?", "js": "num?", "rank_b_of_a_top1": "nat", "rank_a_of_b_top1": "nat"}
LSIDE = {"top": "[dict]", "margin": "num?", "entropy": "num?"}
LTOP = {"id": "nat", "piece": "str?", "logit": "num", "prob": "num?"}
TENSOR = {"entry": "str", "shape": "[nat]", "dtype": "str"}


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
    for key, pm in r["pairs"].items():
        _fields(pm, PAIR, f"{where}.pairs.{key}")
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
    _fields(r, REC, w, tuple(REC))
    if r["index"] != i:
        raise TraceError(f"manifest: {w}.index is {r['index']}, expected {i}")
    if any(p >= len(tr.tokens) for p in r["positions"]):
        raise TraceError(f"manifest: {w}.positions {r['positions'][:8]} go past the {len(tr.tokens)} tokens")
    _check_metrics(r, tr.labels, w)
    rec = Record(index=i, name=r["name"], kind=r["kind"], layer=r["layer"], step=r["step"],
                 positions=tuple(r["positions"]), axes=tuple(r["axes"]), inputs=tuple(r["inputs"]),
                 weight=r["weight"], weight_types=dict(r["weight_types"]), ggml_name=r["ggml_name"],
                 stats=r["stats"], pairs=r["pairs"], logits=r["logits"])
    tp = r["tensor_positions"]
    if r["tensors"]:
        if tp is None or not set(tp) <= set(rec.positions) or len(set(tp)) != len(tp):
            raise TraceError(f"manifest: {w}.tensor_positions {tp} is not a subset of its positions")
        tr.tensor_positions[i] = tuple(tp)
    for lab, t in r["tensors"].items():
        tw = f"{w}.tensors.{lab}"
        _fields(t, TENSOR, tw, tuple(TENSOR))
        if lab not in tr.labels:
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
    if m.get("version") != VERSION:
        raise TraceError(f"unsupported trace version {str(m.get('version'))[:20]} (this qdbg reads {VERSION})")
    _fields(m, TOP, "manifest", tuple(TOP))
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
               created_at=m["created_at"], qdbg_version=m["qdbg_version"], version=m["version"])
    refs: list = []
    tr.records = [_record_from(r, i, tr, refs) for i, r in enumerate(m["records"])]
    if m["n_tensors"] != len(refs):
        raise TraceError(f"manifest: n_tensors {m['n_tensors']} but {len(refs)} tensors are listed")
    return tr, refs


# ---- snapshot and save -----------------------------------------------------------------------

_SHA: dict[tuple, str] = {}


def _sha256(model: Any) -> str | None:
    """The model file's sha256, memoised per (path, size, mtime)."""
    try:
        st = os.stat(model.path)
    except (OSError, TypeError):
        return None
    key = (str(model.path), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        _SHA[key] = model.sha256()
    return _SHA[key]


def _model_info(model: Any, hashes: bool) -> ModelInfo:
    if isinstance(model, ReplayModel):
        return model.info
    try:
        size: int | None = os.stat(model.path).st_size
    except OSError:
        size = None
    return ModelInfo(str(model.path), str(model.name), size, _sha256(model) if hashes else None,
                     dict(model.tensor_types()), model.config)


def _piece_of(pieces: Any, tid: int) -> str | None:
    try:
        p = pieces(tid) if callable(pieces) else pieces[tid]
    except (QdbgError, IndexError, KeyError, TypeError, ValueError):
        return None
    if isinstance(p, (bytes, bytearray)):
        return bytes(p).decode("utf-8", "backslashreplace")
    return None if p is None else str(p)


def _add_pieces(out: dict[int, str], pieces: Any, ids: set[int]) -> None:
    for t in sorted(ids - set(out)):
        pc = _piece_of(pieces, t)
        if pc is not None:
            out[t] = pc


def _top_ids(values: np.ndarray, k: int) -> set[int]:
    """Ids that can be in the top-k of any row of logits [.., n_vocab] (ties included, capped)."""
    rows = values.reshape(-1, values.shape[-1])  # [n_pos, n_vocab]
    n = rows.shape[1]
    k = min(k, n)
    out: set[int] = set()
    for c in range(0, rows.shape[0], 64):
        r = np.where(np.isnan(rows[c:c + 64]), -np.inf, rows[c:c + 64])
        kth = np.partition(r, n - k, axis=1)[:, n - k]
        for row, t in zip(r, kth):
            out.update(np.flatnonzero(row >= t)[:k + 64].tolist())
    return out


def _value_positions(session: Session, rec: Record) -> tuple[int, ...]:
    """Token positions covered by rec.values (a replay may hold slices)."""
    sp = getattr(session, "saved_positions", None)
    got = sp(rec) if sp is not None else None
    return rec.positions if got is None else got


def snapshot(session: Session, *, prompt_text: str | None = None, hashes: bool = True) -> Trace:
    """The session's state as a Trace in memory (Record copies sharing the value arrays)."""
    pieces: dict[int, str] = {}
    if session.pieces is not None:
        ids = set(session.tokens)
        for rec in session.history:
            for lg in (rec.logits or {}).values():
                for p in lg.get("positions", []):
                    ids.update(t["id"] for s in ("a", "b") for t in p[s]["top"])
        _add_pieces(pieces, session.pieces, ids)
    recs = [dataclasses.replace(r, values=dict(r.values)) for r in session.history]
    tpos = {r.index: _value_positions(session, r) for r in session.history if r.values}
    return Trace(
        labels=list(session.labels), models={lab: _model_info(session.models[lab], hashes) for lab in session.labels},
        prompt=list(session.prompt), tokens=list(session.tokens),
        prompt_text=prompt_text if prompt_text is not None else getattr(session, "prompt_text", None),
        mode=session.mode, scope=session.scope, top_k=session.top_k, driver=session.driver,
        pending=list(session.pending), breakpoints=session.breakpoints.to_json(), cursor=session.cursor,
        records=recs, tensor_positions=tpos, pieces=pieces, qdbg_version=_qdbg_version(),
        tensors={"policy": "full" if tpos else "none"})


def _qdbg_version() -> str:
    import qdbg

    return str(getattr(qdbg, "__version__", ""))


def _selected(tr: Trace, rec: Record) -> int | None:
    """The token position whose slice the 'position' policy keeps (None: not in scope)."""
    if tr.scope in (SCOPE_LAST, SCOPE_ALL):
        return rec.positions[-1] if rec.positions else None
    return tr.scope if tr.scope in rec.positions else None


def _plan(tr: Trace, budget: int) -> dict[int, tuple[tuple[int, ...], dict[str, np.ndarray]]]:
    """Choose what tensors to save within `budget` bytes; fills tr.tensors; index -> (positions, arrays)."""
    have = {r.index: r for r in tr.records if r.values}
    total = sum(v.nbytes for r in have.values() for v in r.values.values())
    plan = {i: (tr.tensor_positions[i], dict(r.values)) for i, r in have.items()}
    policy = "full"
    if total > budget:
        policy = "position"
        plan = {}
        for i, r in have.items():
            vp, p = tr.tensor_positions[i], _selected(tr, r)
            if "token" not in r.axes:
                plan[i] = (vp, dict(r.values))
            elif p is not None and p in vp:
                ax, j = r.axes.index("token"), vp.index(p)
                sl = (slice(None),) * ax + (slice(j, j + 1),)  # [.., n_pos, ..] -> [.., 1, ..] (a view)
                plan[i] = ((p,), {lab: v[sl] for lab, v in r.values.items()})
        size = {i: sum(v.nbytes for v in a.values()) for i, (_, a) in plan.items()}
        if sum(size.values()) > budget:  # keep the ops nearest the cursor that fit
            policy, kept, used = "partial", {}, 0
            for i in sorted(plan, key=lambda i: (abs(i - tr.cursor), i)):
                if used + size[i] <= budget:
                    kept[i], used = plan[i], used + size[i]
            plan = kept
            if not plan:
                policy = "none"
    saved = sum(v.nbytes for _, a in plan.values() for v in a.values())
    notes = {"full": "every op's full tensors",
             "position": "each op's slice at the selected token position only",
             "partial": "selected-position slices of the ops nearest the cursor only; the rest dropped",
             "none": "no tensors (budget too small)"}
    tr.tensors = {"policy": policy, "budget_bytes": budget, "total_bytes": total, "saved_bytes": saved,
                  "n_records_with_tensors": len(plan), "note": notes[policy]}
    return plan


def _entry_name(lab: str, rec: Record, used: set[str]) -> str:
    ok = rec.name and all(c.isalnum() or c in "_-.+" for c in rec.name) and rec.name != MANIFEST
    name = f"{lab}/{rec.step}/{rec.name if ok else f'op{rec.index}'}"
    if name in used:
        name = f"{lab}/{rec.step}/op{rec.index}"
    used.add(name)
    return name


def _put(z: zipfile.ZipFile, name: str, arr: np.ndarray, compress: int) -> None:
    zi = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
    zi.compress_type = compress
    zi.external_attr = 0o644 << 16
    with z.open(zi, "w", force_zip64=True) as fp:
        np.lib.format.write_array(fp, arr, allow_pickle=False)


def save_trace(session: Session, path: str | os.PathLike, *, tensor_budget_bytes: int = DEFAULT_BUDGET,
               prompt_text: str | None = None) -> Path:
    """Write the session to `path` atomically; full tensors if they fit in the budget, else the
    selected position's slices, else as many slices as fit (nearest the cursor first)."""
    if isinstance(tensor_budget_bytes, bool) or not isinstance(tensor_budget_bytes, int) or tensor_budget_bytes < 0:
        raise UsageError(f"tensor budget must be a non-negative number of bytes, got {tensor_budget_bytes!r}")
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, expected a trace file name")
    tr = snapshot(session, prompt_text=prompt_text)
    plan = _plan(tr, tensor_budget_bytes)
    if session.pieces is not None:  # name the top ids of saved logits, for a replay that re-measures
        ids: set[int] = set()
        for i, (_, arrs) in plan.items():
            if tr.records[i].name == "result_output":
                for v in arrs.values():
                    ids |= _top_ids(np.asarray(v), max(2, tr.top_k))
        _add_pieces(tr.pieces, session.pieces, ids)
    used: set[str] = set()
    entries: list[tuple[str, np.ndarray]] = []
    recs = []
    for rec in tr.records:
        d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(Record) if f.name != "values"}
        pos, arrs = plan.get(rec.index, (None, {}))
        d["tensor_positions"] = list(pos) if arrs else None
        d["tensors"] = {}
        for lab, v in arrs.items():
            v = np.asarray(v)
            if v.dtype.str not in DTYPES:
                v = v.astype("<f4" if v.dtype.kind == "f" and v.dtype.itemsize <= 4 else "<f8")
            name = _entry_name(lab, rec, used)
            d["tensors"][lab] = {"entry": name, "shape": list(v.shape), "dtype": v.dtype.str}
            entries.append((name, v))
        recs.append(d)
    manifest = {
        "format": FORMAT, "version": VERSION, "qdbg_version": tr.qdbg_version,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "labels": tr.labels,
        "models": {lab: {"path": mi.path, "name": mi.name, "size": mi.size, "sha256": mi.sha256,
                         "tensor_types": mi.tensor_types,
                         "config": {f.name: getattr(mi.config, f.name) for f in dataclasses.fields(mi.config)}}
                   for lab, mi in tr.models.items()},
        "prompt_text": tr.prompt_text, "prompt": tr.prompt, "tokens": tr.tokens,
        "pieces": tr.pieces, "mode": tr.mode, "scope": tr.scope, "top_k": tr.top_k, "driver": tr.driver,
        "pending": tr.pending, "breakpoints": tr.breakpoints, "cursor": tr.cursor, "tensors": tr.tensors,
        "n_records": len(recs), "n_tensors": len(entries), "records": recs,
    }
    blob = np.frombuffer(dumps(manifest), dtype=np.uint8)

    def write(f: Any) -> None:
        with zipfile.ZipFile(f, "w", allowZip64=True) as z:
            z.comment = f"{FORMAT} {VERSION}".encode()
            _put(z, MANIFEST, blob, zipfile.ZIP_DEFLATED)
            for name, v in entries:
                _put(z, name, v, zipfile.ZIP_STORED)

    atomic_write(path, write)
    return path


def parse_size(text: str) -> int:
    """A byte count for --trace-budget: '0', '500000', '512k', '64M', '1.5G' (powers of 1024)."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        v = float(t[:-1] if mult > 1 else t)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0 or v * mult > 1 << 50:
        raise UsageError(f"not a size: {text!r} (use e.g. 0, 512k, 64M, 1G)")
    return int(v * mult)


# ---- load ------------------------------------------------------------------------------------

def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo, fsize: int, *, shape: tuple | None = None,
              dtype: str | None = None, limit: int | None = None) -> np.ndarray:
    """One .npy entry, its sizes checked against the manifest and the file before reading."""
    n = info.filename
    if info.flag_bits & 1:
        raise TraceError(f"entry {n} is encrypted")
    if shape is not None and info.compress_type != zipfile.ZIP_STORED:
        raise TraceError(f"entry {n} is compressed; tensor entries must be stored")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise TraceError(f"entry {n} uses unsupported compression {info.compress_type}")
    stored = info.compress_type == zipfile.ZIP_STORED
    if info.compress_size > fsize or (stored and info.file_size != info.compress_size):
        raise TraceError(f"entry {n} claims {info.compress_size} bytes in a {fsize}-byte file")
    if limit is not None and info.file_size > limit:
        raise TraceError(f"entry {n} claims {info.file_size} bytes, over the limit of {limit}")
    if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 4096:
        raise TraceError(f"entry {n} claims an implausible size ({info.file_size} from {info.compress_size} bytes)")
    with z.open(info) as fp:
        ver = np.lib.format.read_magic(fp)
        if ver not in ((1, 0), (2, 0), (3, 0)):
            raise TraceError(f"entry {n}: unknown npy version {ver}")
        rd = np.lib.format.read_array_header_1_0 if ver == (1, 0) else np.lib.format.read_array_header_2_0
        shp, fortran, dt = rd(fp)
        if fortran or dt.str not in (*DTYPES, "|u1") or (dtype is not None and dt.str != dtype) \
                or (shape is not None and tuple(shp) != shape):
            raise TraceError(f"entry {n}: header {dt.str} {list(shp)} does not match the manifest "
                             f"({dtype} {list(shape) if shape else '?'})")
        nbytes = math.prod(shp) * dt.itemsize
        if fp.tell() + nbytes != info.file_size:
            raise TraceError(f"entry {n}: {info.file_size} bytes do not hold a {dt.str} array of shape {list(shp)}")
        data = fp.read(nbytes)
        if len(data) != nbytes or fp.read(1):
            raise TraceError(f"entry {n} is truncated")
    return np.frombuffer(data, dtype=dt).reshape(shp)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:160] or type(e).__name__


def load_trace(path: str | os.PathLike) -> Trace:
    """Read and validate a trace file; any fault is a one-line TraceError naming the file."""
    p = Path(path)
    try:
        st = p.stat()
        isdir = p.is_dir()
    except (OSError, ValueError) as e:
        raise TraceError(f"{p}: cannot read ({getattr(e, 'strerror', None) or _one_line(e)})") from None
    if isdir:
        raise TraceError(f"{p}: is a directory, not a trace file")
    if st.st_size == 0:
        raise TraceError(f"{p}: empty file, not a trace")
    try:
        z = zipfile.ZipFile(p)
    except OSError as e:
        raise TraceError(f"{p}: cannot read ({e.strerror or _one_line(e)})") from None
    except _LOW as e:
        raise TraceError(f"{p}: not a qdbg trace (not a zip archive: {_one_line(e)})") from None
    try:
        with z:
            tr = _load(z, st.st_size)
    except TraceError as e:
        raise TraceError(f"{p}: {' '.join(str(e).split())}") from None
    except _LOW as e:
        raise TraceError(f"{p}: corrupt trace ({type(e).__name__}: {_one_line(e)})") from None
    return tr


def _load(z: zipfile.ZipFile, fsize: int) -> Trace:
    magic = z.comment.decode("ascii", "replace").split(" ")
    if len(magic) != 2 or magic[0] != FORMAT:
        raise TraceError(f"not a qdbg trace (no '{FORMAT} <version>' zip comment), or truncated")
    if magic[1] != str(VERSION):
        raise TraceError(f"unsupported trace version {magic[1][:20]!r} (this qdbg reads {VERSION})")
    infos = z.infolist()
    names = [i.filename for i in infos]
    if len(infos) > MAX_ENTRIES or len(set(names)) != len(names):
        raise TraceError(f"{len(infos)} zip entries, duplicated or too many")
    by = dict(zip(names, infos))
    mi = by.get(MANIFEST + ".npy")
    if mi is None:
        raise TraceError("no manifest entry: not a qdbg trace")
    blob = _read_npy(z, mi, fsize, limit=MAX_MANIFEST_BYTES)
    if blob.dtype.str != "|u1" or blob.ndim != 1:
        raise TraceError("manifest entry is not a 1-d uint8 array")
    try:
        m = loads(blob.tobytes())
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise TraceError(f"manifest is not strict UTF-8 JSON ({_one_line(e)})") from None
    tr, refs = _trace_from(m)
    missing = [r[2] for r in refs if r[2] not in by]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TraceError(f"missing entry {missing[0]}{more}")
    extra = set(names) - {MANIFEST + ".npy"} - {r[2] for r in refs}
    if extra or len({r[2] for r in refs}) != len(refs):
        raise TraceError(f"entries not matching the manifest: {sorted(extra)[:3] or 'duplicated references'}")
    for rec, lab, entry, shape, dtype in refs:
        rec.values[lab] = _read_npy(z, by[entry], fsize, shape=shape, dtype=dtype)
    return tr


# ---- replay ----------------------------------------------------------------------------------

class ReplayModel:
    """Stands in for qdbg.model.Model in a replay: identity and config, no weights or tokenizer."""

    def __init__(self, info: ModelInfo) -> None:
        self.info, self.path, self.config, self.name = info, Path(info.path), info.config, info.name

    def tensor_types(self) -> dict[str, str]:
        return dict(self.info.tensor_types)

    def type_summary(self) -> str:
        return self.info.type_summary()

    def sha256(self) -> str:
        if self.info.sha256 is None:
            raise UsageError(f"the trace did not record the sha256 of {self.path.name}")
        return self.info.sha256

    @property
    def tokenizer(self) -> Any:
        raise UsageError(f"a replay has no tokenizer: {self.path.name} is not opened")

    def weight(self, name: str) -> Any:
        raise UsageError(f"a replay has no weights: {self.path.name} is not opened ('{name}')")


class ReplaySession(Session):
    """A Session over a loaded Trace: the verbs (step, back, next_layer, cont, run_to, run_to_end,
    restart, final, variables) walk the recorded ops; nothing is computed and no model is opened.

    It starts where the saved session was (all recorded ops in history, the saved cursor);
    `restart()` empties the history and stepping hands the ops out again in order. `decode`
    raises UsageError; `set_scope` works when the saved tensors cover the new scope.
    """

    def __init__(self, trace: Trace) -> None:  # no Session.__init__: no models, no engines
        self.trace = trace
        self.models = {lab: ReplayModel(trace.models[lab]) for lab in trace.labels}
        self.labels = list(trace.labels)
        self.prompt = list(trace.prompt)
        self.prompt_text = trace.prompt_text
        self.mode, self.top_k = trace.mode, trace.top_k
        self.pieces: Any = dict(trace.pieces)
        self.breakpoints = BreakpointList.from_json(trace.breakpoints)
        self.engines: dict = {}
        self._scope = trace.scope
        self.restart()
        while self._advance() is not None:
            pass
        self.cursor = trace.cursor

    @classmethod
    def from_trace(cls, trace: Trace) -> ReplaySession:
        return cls(trace)

    def restart(self) -> None:
        """Back to before the first op (breakpoints stay)."""
        self.history: list[Record] = []
        self.cursor = -1
        self.tokens = list(self.prompt)
        self.pending: list[int | None] = []
        self.driver = self.trace.driver
        self._gens = None

    @property
    def at_end(self) -> bool:
        return len(self.history) == len(self.trace.records) and self.cursor == len(self.history) - 1

    def saved_positions(self, rec: Record) -> tuple[int, ...] | None:
        """Token positions covered by rec.values (None: no tensors saved for it)."""
        return self.trace.tensor_positions.get(rec.index)

    def _advance(self) -> Record | None:
        i = len(self.history)
        if i >= len(self.trace.records):
            return None
        src = self.trace.records[i]
        rec = dataclasses.replace(src, values=dict(src.values))
        if self._scope == self.trace.scope:
            rec.stats, rec.pairs, rec.logits = src.stats, src.pairs, src.logits
        else:
            self._measure(rec)
        self.history.append(rec)
        need = max(rec.positions, default=-1) + 1
        if len(self.tokens) < need:
            self.tokens = list(self.trace.tokens[:need])
        return rec

    def _wanted(self, rec: Record, scope: str | int) -> tuple[int, ...]:
        if scope == SCOPE_ALL:
            return rec.positions
        if scope == SCOPE_LAST:
            return rec.positions[-1:]
        return (scope,) if scope in rec.positions else ()

    def _scope_slice(self, rec: Record, x: np.ndarray) -> np.ndarray | None:
        sp = self.saved_positions(rec)
        if "token" not in rec.axes or sp is None:
            return x if "token" not in rec.axes else None
        want = self._wanted(rec, self._scope)
        if not want or not set(want) <= set(sp):
            return None
        return np.take(x, [sp.index(p) for p in want], axis=rec.axes.index("token"))

    def set_scope(self, scope: str | int) -> None:
        """Change the scope; UsageError unless it is the recorded one or the saved tensors cover it."""
        if scope not in (SCOPE_LAST, SCOPE_ALL):
            try:
                scope = int(scope)
            except (TypeError, ValueError):
                raise UsageError(f"scope must be 'last', 'all' or a position, got {scope!r}") from None
        if scope != self.trace.scope:
            for r in self.trace.records:
                want, sp = self._wanted(r, scope), self.saved_positions(r)
                if want and (sp is None or len(r.values) != len(self.labels) or not set(want) <= set(sp)):
                    raise UsageError(
                        f"this trace cannot show scope {scope!r}: it was recorded with scope {self.trace.scope!r} "
                        f"and keeps {self.trace.tensors.get('note', 'no tensors')}; op {r.name} (step {r.step}) "
                        f"has tensors for positions {list(sp) if sp else 'none'}")
        Session.set_scope(self, scope)

    def _measure(self, rec: Record) -> None:
        if self._scope == self.trace.scope and rec.index < len(self.trace.records):
            src = self.trace.records[rec.index]
            rec.stats, rec.pairs, rec.logits = src.stats, src.pairs, src.logits
        else:
            Session._measure(self, rec)

    def decode(self, n: int, driver: str = "a", text_tokens: Any = None) -> None:
        """A replay cannot compute new tokens: always UsageError."""
        steps = 1 + max((r.step for r in self.trace.records), default=0)
        raise UsageError(f"a replay cannot decode: the trace holds only the {steps} recorded pass(es) "
                         f"over {len(self.trace.tokens)} tokens; step on to see them, or rerun with the models")


def open_replay(path: str | os.PathLike) -> ReplaySession:
    """Load a trace file and return a ReplaySession positioned where the saved session was."""
    return ReplaySession(load_trace(path))
