"""Single-model commands: inspect (one file, or the type differences of two), logits, tokenize,
synth and quantize."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qdbg.cli_args import (_add_numerics_args, _existing_file, _fmt_bytes, _print_json,  # noqa: F401
                           check_prompt_args, open_model, prompt_tokens, settings_from_args)
from qdbg.errors import QdbgError, UsageError

SYNTH_FIELDS = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_vocab", "sliding_window", "seed")

def _type_counts(m) -> dict[str, int]:
    """{quant type name: number of tensors}, most common first."""
    counts: dict[str, int] = {}
    for t in m.tensors.values():
        counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def cmd_inspect(args: argparse.Namespace) -> int:
    if len(args.model) > 2:
        raise UsageError("inspect takes one file, or two to compare their tensor types")
    if len(args.model) == 2:
        return _inspect_diff(args)
    from dataclasses import asdict

    m = open_model(args.model[0])
    cfg = {k: v for k, v in asdict(m.config).items() if k != "extra"}
    cfg["swa_layers"] = list(cfg["swa_layers"])
    tensors = [
        {"name": t.name, "shape": list(t.shape), "type": t.qtype.name, "bytes": t.n_bytes}
        for t in m.tensors.values()
    ]
    from qdbg.numerics.exact import coverage

    cov = coverage({t.name: (t.qtype, tuple(t.shape)) for t in m.tensors.values()})
    if args.json:
        _print_json({"path": str(m.path), "gguf_version": m.gguf.version, "architecture": m.config.arch,
                     "name": m.name, "config": cfg, "types": _type_counts(m), "tensors": tensors,
                     "exact_mode": cov})
        return 0
    from qdbg.cli_progress import plain_table, stdout_console

    con = stdout_console()
    con.print(f"[bold]{m.path.name}[/]  GGUF v{m.gguf.version}  {m.config.arch}  '{m.name}'  "
              f"{_fmt_bytes(m.path.stat().st_size)}")
    con.print(f"types: {m.type_summary()}")
    con.print(f"exact mode reproduces: {cov['profile']['description']}", highlight=False)
    con.print(f"  {len(cov['repacked'])} matrices repacked as llama.cpp does (CPU_REPACK); "
              + (f"approximate (no exact kernel): {', '.join(cov['approximate'])}" if cov["approximate"]
                 else "every matrix has an exact kernel"), highlight=False)
    ct = plain_table(show_header=False, box=None, pad_edge=False)
    for k, v in cfg.items():
        if k == "swa_layers" and v:
            v = "".join("s" if s else "G" for s in v)
        ct.add_row(k, str(v))
    con.print(ct)
    tt = plain_table("tensor", "shape", "type", "bytes", box=None, pad_edge=False)
    for t in tensors:
        tt.add_row(t["name"], "x".join(map(str, t["shape"])), t["type"], _fmt_bytes(t["bytes"]))
    con.print(tt)
    return 0


def _inspect_diff(args: argparse.Namespace) -> int:
    """`inspect A B`: the tensors whose types differ (with sizes), and those only one file has."""
    a, b = open_model(args.model[0]), open_model(args.model[1])
    ta, tb = a.tensors, b.tensors
    differ = [{"name": n, "shape": list(ta[n].shape), "a_type": ta[n].qtype.name, "b_type": tb[n].qtype.name,
               "a_bytes": ta[n].n_bytes, "b_bytes": tb[n].n_bytes}
              for n in ta if n in tb and ta[n].qtype != tb[n].qtype]
    only_a, only_b = [n for n in ta if n not in tb], [n for n in tb if n not in ta]
    doc = {"a": str(a.path), "b": str(b.path), "a_types": _type_counts(a), "b_types": _type_counts(b),
           "differ": differ, "same": sum(1 for n in ta if n in tb) - len(differ),
           "only_a": only_a, "only_b": only_b,
           "a_bytes": sum(t.n_bytes for t in ta.values()), "b_bytes": sum(t.n_bytes for t in tb.values())}
    if args.json:
        _print_json(doc)
        return 0
    from qdbg.cli_progress import plain_table, stdout_console

    con = stdout_console()
    con.print(f"A = {a.path.name}  ({a.type_summary()})", highlight=False)
    con.print(f"B = {b.path.name}  ({b.type_summary()})", highlight=False)
    con.print(f"{len(differ)} tensors differ in type, {doc['same']} agree; tensor data "
              f"A {_fmt_bytes(doc['a_bytes'])}, B {_fmt_bytes(doc['b_bytes'])}", highlight=False)
    if differ:
        t = plain_table("tensor", "shape", "A type", "B type", "A bytes", "B bytes", box=None, pad_edge=False)
        for d in differ:
            t.add_row(d["name"], "x".join(map(str, d["shape"])), d["a_type"], d["b_type"],
                      _fmt_bytes(d["a_bytes"]), _fmt_bytes(d["b_bytes"]))
        con.print(t)
    for lab, names in (("A", only_a), ("B", only_b)):
        if names:
            con.print(f"only in {lab}: {', '.join(names)}", highlight=False)
    return 0


def cmd_logits(args: argparse.Namespace) -> int:
    from qdbg.cli_progress import progress_bar
    from qdbg.engine.forward import Engine
    from qdbg.metrics import log_softmax

    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: give at least 1")
    if args.save_logits:
        from qdbg.util import atomic_write, check_output

        check_output(args.save_logits)
    m = open_model(args.model)
    ids = prompt_tokens(m, args)
    if len(ids) > m.config.n_ctx_train:
        raise UsageError(f"the prompt has {len(ids)} tokens, more than the context ({m.config.n_ctx_train})")
    settings = settings_from_args(args)
    if args.decode < 0 or args.decode >= len(ids):
        raise UsageError(f"--decode {args.decode}: give a number from 0 to {len(ids) - 1} "
                         f"(the first tokens are the prompt)")
    engine = Engine(m, args.mode, settings=settings)
    with progress_bar(f"logits of {m.path.name}") as progress:
        logits = engine.logits(ids, decode=args.decode, progress=progress)
    k = max(1, min(args.top_k, logits.shape[1]))
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    if args.save_logits:
        atomic_write(args.save_logits, lambda f: np.save(f, logits.astype(np.float32)))
    if args.json:
        tok = _tokenizer_or_none(m)
        lps = [log_softmax(row) for row in logits]

        def entry(p: int, i: int) -> dict:
            lp = lps[p]
            e = {"id": int(i), "logit": float(logits[p, i]), "prob": None if lp is None else float(np.exp(lp[i]))}
            if tok is not None:
                pj = _pieces_json(tok, [i])
                e["piece"], e["piece_bytes"] = pj["pieces"][0], pj["piece_bytes"][0]
            return e

        _print_json({
            "numerics": engine.numerics.to_json(),
            "tokens": ids,
            **(_pieces_json(tok, ids) if tok is not None else {}),
            "top_k": [[entry(p, i) for i in top[p]] for p in range(len(ids))],
        })
        return 0
    pieces = _pieces(m)
    for p, tid in enumerate(ids):
        row = "  ".join(f"{int(i)}{pieces(int(i))}={logits[p, i]:.3f}" for i in top[p])
        print(f"{p:4d} {tid:7d}{pieces(tid)}  ->  {row}")
    return 0


def _tokenizer_or_none(m):
    try:
        return m.tokenizer
    except QdbgError:
        return None


def _pieces(m) -> Callable[[int], str]:
    try:
        tok = m.tokenizer
    except QdbgError:
        return lambda i: ""
    return lambda i: f" {tok.piece(i)!r}"


def cmd_synth(args: argparse.Namespace) -> int:
    from qdbg import synth

    over = {f: getattr(args, f) for f in SYNTH_FIELDS if getattr(args, f) is not None}
    spec = synth.SynthSpec(arch=args.arch, **over)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{args.out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    from qdbg.cli_progress import progress_bar

    with progress_bar("synth") as progress:
        files = synth.write_family(spec, out, [t.strip() for t in args.types.split(",") if t.strip()],
                                   progress=progress)
    for ftype, path in files.items():
        print(f"{ftype:7s} {path}  {_fmt_bytes(path.stat().st_size)}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    m = open_model(args.model)
    args.prompt, args.tokens = args.text, None
    ids = prompt_tokens(m, args, allow_empty=True)
    tok = m.tokenizer
    if args.json:
        _print_json({"ids": ids, **_pieces_json(tok, ids)})
        return 0
    for i, (t, pc) in enumerate(zip(ids, tok.pieces(ids))):
        print(f"{i:5d} {t:8d}  {pc!r}")
    return 0


def _pieces_json(tok, ids: Sequence[int]) -> dict[str, list]:
    """{"pieces": text or null where the bytes are not UTF-8, "piece_bytes": hex of each piece's bytes}."""
    raw = [tok.piece_bytes(int(i)) for i in ids]
    return {"pieces": [_utf8_or_none(b) for b in raw], "piece_bytes": [b.hex() for b in raw]}


def _utf8_or_none(b: bytes) -> str | None:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def cmd_quantize(args: argparse.Namespace) -> int:
    from qdbg.requant import requantize

    from qdbg.cli_progress import progress_bar

    from qdbg.quant.overrides import parse_tensor_type, parse_tensor_type_file

    src = _existing_file(args.src)
    overrides = []  # in command-line order, as llama-quantize collects them
    for kind, value in args.tensor_types or []:
        if kind == "file":
            try:
                overrides += parse_tensor_type_file(_existing_file(value).read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise UsageError(f"{value}: not UTF-8 text") from None
        else:
            overrides.append(parse_tensor_type(value))
    with progress_bar(f"quantize to {args.ftype}") as progress:
        out = requantize(src, args.dst, args.ftype, progress=progress, overrides=overrides)
    print(f"{out}  {_fmt_bytes(out.stat().st_size)}")
    return 0
