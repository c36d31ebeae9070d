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
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from qdbg.errors import TraceError, UsageError
from qdbg.metrics import piece_text
from qdbg.records import AUX_LABELS, Record
from qdbg.scope import Scope
from qdbg.util import atomic_write, check_output

from qdbg.trace_schema import (  # noqa: F401  (re-exported: the trace API lives here)
    DEFAULT_BUDGET, DTYPES, FORMAT, MANIFEST, MAX_DEFLATE_RATIO, MAX_ENTRIES, MAX_MANIFEST_BYTES,
    READS, VERSION, _LOW, ModelInfo, Trace, _trace_from, dumps, loads,
)
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
    info = getattr(model, "info", None)  # a replay's stand-in model carries its recorded identity
    if isinstance(info, ModelInfo):
        return info
    try:
        size: int | None = os.stat(model.path).st_size
    except OSError:
        size = None
    return ModelInfo(str(model.path), str(model.name), size, _sha256(model) if hashes else None,
                     dict(model.tensor_types()), model.config)


def _piece_of(pieces: Any, tid: int) -> str | None:
    return piece_text(pieces, tid, errors="backslashreplace")


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


def _value_positions(session: Any, rec: Record) -> tuple[int, ...]:
    """Token positions covered by rec.values (a replay may hold slices)."""
    got = session.source.held_positions(rec)
    return rec.positions if got is None else got


def snapshot(session: Any, *, prompt_text: str | None = None, hashes: bool = True) -> Trace:
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
        mode=session.mode, numerics=session.numerics_info(), scope=Scope.parse(session.scope).to_json(), top_k=session.top_k, driver=session.driver,
        pending=list(session.pending), breakpoints=session.breakpoints.to_json(), cursor=session.cursor,
        records=recs, tensor_positions=tpos, pieces=pieces, qdbg_version=_qdbg_version(),
        tensors={"policy": "full" if tpos else "none"}, interventions=session.interventions())


def _qdbg_version() -> str:
    import qdbg

    return str(getattr(qdbg, "__version__", ""))


def _selected(tr: Trace, rec: Record) -> int | None:
    """The token position whose slice the 'position' policy keeps (None: not in scope)."""
    kept = Scope.parse(tr.scope).positions(rec.positions)
    return kept[-1] if kept else None


def _plan(tr: Trace, budget: int) -> dict[int, tuple[tuple[int, ...], dict[str, np.ndarray]]]:
    """Choose what tensors to save within `budget` bytes; fills tr.tensors; index -> (positions, arrays)."""
    have = {r.index: r for r in tr.records if r.values}
    arrays = {i: {**r.values, **r.aux} for i, r in have.items()}  # aux: attribution/noise values (qdbg.records)
    total = sum(v.nbytes for a in arrays.values() for v in a.values())
    plan = {i: (tr.tensor_positions[i], dict(arrays[i])) for i in have}
    policy = "full"
    if total > budget:
        policy = "position"
        plan = {}
        for i, r in have.items():
            vp, p = tr.tensor_positions[i], _selected(tr, r)
            if "token" not in r.axes:
                plan[i] = (vp, dict(arrays[i]))
            elif p is not None and p in vp:
                ax, j = r.axes.index("token"), vp.index(p)
                sl = (slice(None),) * ax + (slice(j, j + 1),)  # [.., n_pos, ..] -> [.., 1, ..] (a view)
                plan[i] = ((p,), {lab: v[sl] for lab, v in arrays[i].items()})
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


def save_trace(session: Any, path: str | os.PathLike, *, tensor_budget_bytes: int = DEFAULT_BUDGET,
               prompt_text: str | None = None) -> Path:
    """Write the session to `path` atomically; full tensors if they fit in the budget, else the
    selected position's slices, else as many slices as fit (nearest the cursor first)."""
    if isinstance(tensor_budget_bytes, bool) or not isinstance(tensor_budget_bytes, int) or tensor_budget_bytes < 0:
        raise UsageError(f"tensor budget must be a non-negative number of bytes, got {tensor_budget_bytes!r}")
    path = Path(path)
    check_output(path)  # a directory, socket or '-' fails before the work
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
        d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(Record)
             if f.name not in ("values", "stats", "pairs", "logits")}
        d.update(rec.metrics_json())
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
        "pieces": tr.pieces, "mode": tr.mode, "numerics": tr.numerics, "scope": tr.scope, "top_k": tr.top_k, "driver": tr.driver,
        "pending": tr.pending, "breakpoints": tr.breakpoints, "cursor": tr.cursor, "tensors": tr.tensors,
        "n_records": len(recs), "n_tensors": len(entries), "records": recs, "interventions": tr.interventions,
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
    if magic[1] not in [str(v) for v in READS]:
        raise TraceError(f"unsupported trace version {magic[1][:20]!r} (this qdbg reads "
                         f"{', '.join(map(str, READS))})")
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
    if str(tr.version) != magic[1]:
        raise TraceError(f"the zip comment says version {magic[1]}, the manifest {tr.version}")
    missing = [r[2] for r in refs if r[2] not in by]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TraceError(f"missing entry {missing[0]}{more}")
    extra = set(names) - {MANIFEST + ".npy"} - {r[2] for r in refs}
    if extra or len({r[2] for r in refs}) != len(refs):
        raise TraceError(f"entries not matching the manifest: {sorted(extra)[:3] or 'duplicated references'}")
    for rec, lab, entry, shape, dtype in refs:
        (rec.aux if lab in AUX_LABELS else rec.values)[lab] = _read_npy(z, by[entry], fsize, shape=shape, dtype=dtype)
    return tr



def __getattr__(name: str) -> Any:
    """ReplaySession, ReplayModel and open_replay live in qdbg.replay (imported on first use)."""
    if name in ("ReplaySession", "ReplayModel", "open_replay"):
        from qdbg import replay

        return getattr(replay, name)
    raise AttributeError(name)
