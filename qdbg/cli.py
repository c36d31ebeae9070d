"""qdbg's command line: argparse front door, one small function per command.

Every QdbgError (and every OS error about a path the user gave) becomes one line on stderr and
exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qdbg.errors import QdbgError, UsageError

EXIT_USAGE = 2
DEFAULT_TRACE_BUDGET = "64M"
SYNTH_FIELDS = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_vocab", "sliding_window", "seed")


# --- helpers -------------------------------------------------------------------------------

def _existing_file(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file")
    if p.is_dir():
        raise UsageError(f"{path}: is a directory, expected a file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{path}: permission denied")
    return p


def open_model(path: str):
    """Factory shared by every command (and by tests) that needs a model."""
    from qdbg.model import Model

    return Model(_existing_file(path))


def _parse_tokens(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UsageError(f"--tokens takes comma-separated integers, got {text!r}") from None
    if not ids:
        raise UsageError("--tokens is empty: give at least one token id")
    return ids


def check_prompt_args(args: argparse.Namespace) -> None:
    """Reject malformed --tokens and prompt options that would be ignored; read --chat-template now
    (all before any work)."""
    chat = getattr(args, "chat", False)
    for flag, value in (("--system", getattr(args, "system", None)),
                        ("--chat-template", getattr(args, "chat_template", None))):
        if value is not None and not chat:
            raise UsageError(f"{flag} only applies with --chat")
    if getattr(args, "tokens", None) is not None:
        if chat:
            raise UsageError("--chat wraps a --prompt; --tokens are used exactly as given")
        _parse_tokens(args.tokens)
    path = getattr(args, "chat_template", None)
    if path is not None:
        try:
            args.chat_template_text = _existing_file(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not UTF-8 text") from None


def prompt_tokens(model, args: argparse.Namespace, *, allow_empty: bool = False) -> list[int]:
    """The token ids a command runs on: --tokens as given, or --prompt through the tokenizer.

    An explicit `--system ""` is a system message with empty content (a template then does not add
    its default one). `allow_empty` is for `tokenize`, which, like llama.cpp, may return no tokens.
    """
    if getattr(args, "tokens", None) is not None:
        return _parse_tokens(args.tokens)
    text = args.prompt
    tok = model.tokenizer
    if getattr(args, "chat", False):
        system = getattr(args, "system", None)
        text = tok.render_chat([{"role": "user", "content": text}], add_generation_prompt=True,
                               system=system, template=getattr(args, "chat_template_text", None))
    ids = tok.encode(text, add_bos=False if args.no_bos else None, parse_special=not args.no_special)
    if not ids and not allow_empty:
        raise UsageError("the prompt tokenizes to no tokens; a model needs at least one")
    return ids


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="text to tokenize with the model's own tokenizer")
    g.add_argument("--tokens", help="comma-separated token ids, used exactly as given")
    _add_text_args(p)


def _add_text_args(p: argparse.ArgumentParser) -> None:
    """How text becomes tokens: chat template, system message, BOS, special tokens."""
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the file's chat template")
    p.add_argument("--system", help="system message for --chat (an explicit \"\" is an empty one)")
    p.add_argument("--chat-template", metavar="FILE",
                   help="with --chat: a Jinja chat template to use instead of the file's")
    p.add_argument("--no-bos", action="store_true", help="do not add BOS even if the file asks for it")
    p.add_argument("--no-special", action="store_true", help="tokenize special-token text as plain text")


def _default_threads() -> int:
    """llama-cpp-python's default thread count: half the cores, at least one."""
    return max((os.cpu_count() or 1) // 2, 1)


def _add_numerics_args(p: argparse.ArgumentParser) -> None:
    """The numeric mode and the llama.cpp context settings that change its arithmetic."""
    from qdbg.numerics import DEFAULT_MODE, MODES

    p.add_argument("--mode", choices=tuple(MODES), default=DEFAULT_MODE,
                   help="exact: llama.cpp's CPU arithmetic bit for bit (default); f32: dequantized "
                        "weights and float32 activations, the weights' error alone")
    p.add_argument("--ubatch", type=int, default=512, metavar="N",
                   help="micro-batch size: prompts run in passes of at most N tokens (llama.cpp's n_ubatch)")
    p.add_argument("--flash-attn", choices=("on", "off"), default="off",
                   help="llama.cpp's flash-attention kernels (exact mode only; default off)")
    p.add_argument("--threads", type=int, default=_default_threads(), metavar="N",
                   help="llama.cpp's thread count (changes the bits of flash-attention decodes over "
                        ">= 512 KV cells; default: half the cores, as llama-cpp-python)")
    p.add_argument("--ctx-size", type=int, default=512, metavar="N",
                   help="llama.cpp's context size (bounds the KV view; default 512)")


def settings_from_args(args: argparse.Namespace):
    from qdbg.numerics import RunSettings

    return RunSettings(n_ubatch=args.ubatch, n_ctx=args.ctx_size, flash_attn=args.flash_attn == "on",
                       n_threads=args.threads)


def _add_pair_args(p: argparse.ArgumentParser) -> None:
    """What every two-model command takes: A, B, the prompt, an optional reference, mode, breakpoints."""
    p.add_argument("a", metavar="A.gguf")
    p.add_argument("b", metavar="B.gguf")
    _add_prompt_args(p)
    p.add_argument("--ref", metavar="R.gguf", help="a higher-precision reference (F16, Q8_0)")
    _add_numerics_args(p)
    p.add_argument("--break", dest="breaks", action="append", metavar="EXPR",
                   help="breakpoint condition, e.g. 'rel_rms > 0.01': stops where it becomes true (repeatable)")
    p.add_argument("--break-every", dest="breaks_every", action="append", metavar="EXPR",
                   help="breakpoint that stops at every op where the condition holds (repeatable)")
    p.add_argument("--scope", default="last", metavar="last|all|POS",
                   help="token positions the metrics cover: the last (default), all, or one position")
    p.add_argument("--patch", dest="patches", action="append", metavar="GLOB=SIDE",
                   help="tensors matching GLOB come from SIDE on the other side(s), e.g. 'blk.7.*=B' (repeatable)")
    p.add_argument("--resync", dest="resyncs", action="append", metavar="OP_GLOB",
                   help="after ops matching OP_GLOB, A continues from B's output, e.g. 'l_out-*' (repeatable)")
    p.add_argument("--noise", action="store_true",
                   help="measure llama.cpp's own variation: a shadow of A with the other flash-attention setting "
                        "per op (breakpoint variable noise) and another micro-batch split at the logits (each "
                        "flip's noise floor)")


def _print_json(obj: object) -> None:
    """Strict JSON on one line (non-finite floats as {"$float": "nan" | "inf" | "-inf"})."""
    from qdbg.cli_run import jsonable

    sys.stdout.write(json.dumps(jsonable(obj), indent=None, separators=(",", ":"), allow_nan=False) + "\n")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# --- commands ------------------------------------------------------------------------------

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


def _session_from_args(args: argparse.Namespace, paths: dict[str, str]):
    from qdbg.model import Model
    from qdbg.session import Session

    models = {lab: Model(_existing_file(p)) for lab, p in paths.items()}
    ids = prompt_tokens(models["A"], args)
    try:
        pieces = models["A"].tokenizer.piece
    except QdbgError:
        pieces = None
    s = Session(models, ids, mode=args.mode, pieces=pieces, settings=settings_from_args(args),
                scope=getattr(args, "scope", "last"), patches=getattr(args, "patches", None) or (),
                resyncs=getattr(args, "resyncs", None) or (), noise=bool(getattr(args, "noise", False)))
    s.prompt_text = getattr(args, "prompt", None)
    _add_breaks(s, args)
    return s, {lab: m.path.name for lab, m in models.items()}


def _add_breaks(s, args: argparse.Namespace) -> None:
    """--break (edge) and --break-every (level) conditions, each checked against the ops that exist."""
    for expr in args.breaks or []:
        s.add_breakpoint(expr)
    for expr in getattr(args, "breaks_every", None) or []:
        s.add_breakpoint(expr, every=True)


def _check_run_args(args: argparse.Namespace) -> int:
    """`run`'s option checks, all before any model is opened; the trace budget in bytes."""
    if args.gen < 0:
        raise UsageError(f"--gen {args.gen}: give 0 or more tokens to decode")
    if args.max_stops is not None and args.max_stops < 1:
        raise UsageError(f"--max-stops {args.max_stops}: give 1 or more")
    from qdbg.scope import parse_scope

    parse_scope(args.scope)
    if args.text is not None and args.driver != "text":
        raise UsageError("--text is the continuation for --driver text; add --driver text")
    if args.driver == "text" and args.text is None:
        raise UsageError("--driver text needs --text")
    if args.driver in ("a", "b") and args.driver_given and not args.gen:
        raise UsageError(f"--driver {args.driver} picks decoded tokens; add --gen N")
    budget = 0
    if args.trace:
        from qdbg.trace import parse_size
        from qdbg.util import check_output

        check_output(args.trace)
        budget = parse_size(args.trace_budget or DEFAULT_TRACE_BUDGET)
    elif args.trace_budget is not None:
        raise UsageError("--trace-budget only applies with --trace")
    return budget


def cmd_run(args: argparse.Namespace) -> int:
    from qdbg.cli_run import print_results, run_session

    args.driver_given = args.driver is not None
    args.driver = args.driver or "a"
    budget = _check_run_args(args)
    paths = {"A": args.a, "B": args.b}
    if args.ref:
        paths["R"] = args.ref
    s, names = _session_from_args(args, paths)
    forced = None
    if args.driver == "text":
        forced = s.models["A"].tokenizer.encode(args.text, add_bos=False)
        if not forced:
            raise UsageError("--text tokenizes to no tokens")
        if args.gen > len(forced):
            raise UsageError(f"--gen {args.gen} is more than the {len(forced)} tokens of --text")
        args.gen = args.gen or len(forced)
    from qdbg.cli_progress import progress_bar

    with progress_bar("run") as progress:
        stops = run_session(s, gen=args.gen, driver=args.driver, text_tokens=forced, progress=progress,
                            max_stops=args.max_stops)
    if args.trace:
        from qdbg.trace import save_trace

        save_trace(s, Path(args.trace), tensor_budget_bytes=budget,
                   prompt_text=args.prompt)
    print_results(s, stops, args.json, names)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from qdbg.report import write_report
    from qdbg.trace import load_trace

    trace = load_trace(_existing_file(args.trace))
    write_report(trace, args.output or "-", on_image=lambda p: print(f"wrote {p}", file=sys.stderr))
    if args.output and args.output != "-":
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a trace without its models: headless (--headless) or in the TUI."""
    from qdbg.trace import open_replay

    r = open_replay(_existing_file(args.trace))
    _add_breaks(r, args)
    if args.headless or args.json:
        from qdbg.cli_run import print_results, run_session

        r.restart()
        stops = run_session(r)
        print_results(r, stops, args.json, {lab: m.path.name for lab, m in r.models.items()})
        return 0
    return _run_tui(r, title=f"replay of {Path(args.trace).name}", trace_path=args.trace)


def _run_tui(session, **kw) -> int:
    try:
        from qdbg.tui import make_app
        from qdbg.tui.keymap import user_keymap_path
    except ImportError as e:  # the TUI ships with the package; this only guards a broken install
        raise UsageError(f"the TUI is not available ({e}); use the headless commands") from None
    # the user's key map ($XDG_CONFIG_HOME/qdbg/keys.toml), kernels prepared in the background
    app = make_app(session, keymap_path=user_keymap_path(), warm_kernels=True,
                   **{k: v for k, v in kw.items() if v is not None})
    app.run()
    return EXIT_USAGE if getattr(app, "load_error", None) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from qdbg.demo import demo_pair, demo_prompt

    files = demo_pair(progress=lambda m: print(m, file=sys.stderr))
    args.prompt = args.prompt or demo_prompt()
    args.tokens, args.chat, args.no_bos, args.no_special = None, False, False, False
    s, names = _session_from_args(args, {"A": str(files["Q4_K_M"]), "B": str(files["Q5_K_M"])})
    if args.headless or args.json:
        from qdbg.cli_run import print_results, run_session

        print_results(s, run_session(s), args.json, names)
        return 0
    return _run_tui(s, title=f"qdbg demo: {names['A']} vs {names['B']}")


def cmd_tui(args: argparse.Namespace) -> int:
    """`qdbg A.gguf B.gguf --prompt ...`: the two models side by side in the TUI."""
    paths = {"A": args.a, "B": args.b}
    if args.ref:
        paths["R"] = args.ref
    s, names = _session_from_args(args, paths)
    return _run_tui(s, title=f"qdbg {names['A']} vs {names['B']}", trace_path=args.trace)


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


# --- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="qdbg", description="Step-through debugger for quantized LLMs (GGUF).")
    ap.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="architecture, configuration and tensor table of a GGUF file; "
                                       "with two files, the tensors whose types differ")
    p.add_argument("model", nargs="+", metavar="FILE.gguf")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("logits", help="run one model and print the top-k logits per position")
    p.add_argument("model")
    _add_prompt_args(p)
    _add_numerics_args(p)
    p.add_argument("--decode", type=int, default=0, metavar="K",
                   help="feed the last K tokens one at a time, as generation does (after the prompt)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--save-logits", metavar="FILE.npy", help="save float32 [n_tokens, n_vocab] logits")
    p.set_defaults(fn=cmd_logits)

    p = sub.add_parser("tokenize", help="tokenize text exactly as llama.cpp does")
    p.add_argument("model")
    p.add_argument("text")
    _add_text_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_tokenize)

    p = sub.add_parser("run", help="run two models in lockstep to the end, stopping at breakpoints")
    _add_pair_args(p)
    p.add_argument("--gen", type=int, default=0, metavar="N", help="decode N more tokens after the prompt")
    p.add_argument("--driver", choices=("a", "b", "text"), default=None,
                   help="what picks decoded tokens: A's argmax (default), B's argmax, or --text")
    p.add_argument("--text", metavar="TEXT",
                   help="with --driver text: the continuation to feed (--gen defaults to all its tokens)")
    p.add_argument("--trace", metavar="FILE", help="save the session as a trace")
    p.add_argument("--trace-budget", default=None, metavar="SIZE",
                   help="bytes of full tensors a trace may hold (e.g. 64M, 1G; default 64M)")
    p.add_argument("--max-stops", type=int, default=None, metavar="N",
                   help="stop the run after N breakpoint stops (the final comparison is of what ran)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("tui", help="(the default) step A and B side by side: qdbg A.gguf B.gguf --prompt ...")
    _add_pair_args(p)
    p.add_argument("--trace", metavar="FILE", help="where 'save trace' writes (default qdbg-trace.npz)")
    p.set_defaults(fn=cmd_tui)

    p = sub.add_parser("report", help="write the Markdown study of a saved trace")
    p.add_argument("trace")
    p.add_argument("-o", "--output", metavar="FILE.md", help="write here instead of stdout ('-' is stdout)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("replay", help="step through a saved trace without the model files")
    p.add_argument("trace")
    p.add_argument("--break", dest="breaks", action="append", metavar="EXPR")
    p.add_argument("--headless", action="store_true", help="run to the end and print, no TUI")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("demo", help="the built-in Q4_K_M vs Q5_K_M pair in the TUI, no download needed")
    p.add_argument("--prompt", help="another prompt for the demo model")
    _add_numerics_args(p)
    p.add_argument("--noise", action="store_true", help="measure llama.cpp's own variation (as run --noise)")
    p.add_argument("--break", dest="breaks", action="append", metavar="EXPR")
    p.add_argument("--headless", action="store_true", help="run to the end and print, no TUI")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("quantize", help="requantize a GGUF file with qdbg's llama.cpp-exact quantizers")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("ftype", help="F16 Q8_0 Q6_K Q5_K Q4_K Q5_0 Q4_0 Q4_K_M Q5_K_M Q4_K_S Q5_K_S")
    p.add_argument("--tensor-type", dest="tensor_types", action="append", metavar="PATTERN=TYPE",
                   type=lambda v: ("arg", v), help="as llama-quantize: tensors whose name matches "
                   "the regex PATTERN get TYPE (first match wins; repeatable)")
    p.add_argument("--tensor-type-file", dest="tensor_types", action="append", metavar="FILE",
                   type=lambda v: ("file", v), help="PATTERN=TYPE arguments separated by whitespace")
    p.set_defaults(fn=cmd_quantize)

    p = sub.add_parser("synth", help="write a family of small synthetic GGUF models")
    p.add_argument("--arch", default="llama", choices=("llama", "qwen2", "qwen3", "gemma3"))
    p.add_argument("--types", default="F32,F16,Q8_0,Q4_K_M,Q5_K_M",
                   help="comma-separated file types (F32 F16 Q8_0 Q6_K Q5_K Q4_K Q5_0 Q4_0 Q4_K_M Q5_K_M)")
    p.add_argument("--out", default=".", help="output directory")
    for field in SYNTH_FIELDS:
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, type=int)
    p.set_defaults(fn=cmd_synth)

    from qdbg.cli_scan import add_scan_parser
    add_scan_parser(sub)
    from qdbg.cli_bisect import add_bisect_parser
    add_bisect_parser(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    # `qdbg A.gguf B.gguf ...` is short for `qdbg tui A.gguf B.gguf ...`
    commands = set(ap._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    first = next((i for i, a in enumerate(argv) if a != "--debug"), None)
    if first is not None and not argv[first].startswith("-") and argv[first] not in commands:
        argv.insert(first, "tui")
    args = ap.parse_args(argv)
    import warnings

    def _one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"qdbg: warning: {message}", file=sys.stderr)

    warnings.showwarning = _one_line_warning
    if not getattr(args, "fn", None):
        ap.print_help()
        return EXIT_USAGE
    try:
        if hasattr(args, "no_bos"):
            check_prompt_args(args)
        return args.fn(args)
    except QdbgError as e:
        if args.debug:
            raise
        print(f"qdbg: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, MemoryError) as e:
        if args.debug:
            raise
        print(f"qdbg: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("qdbg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
