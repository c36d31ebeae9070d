"""qdbg's command line: argparse front door and the two-model commands (run, the TUI, demo,
replay, report); single-model commands are in cli_model, scan/bisect in cli_scan/cli_bisect.

Every QdbgError (and every OS error about a path the user gave) becomes one line on stderr and
exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

# the shared argument helpers and the single-model commands live in their own modules; the names
# are re-exported here for the cli_* modules and for tests
from qdbg.cli_args import (_add_numerics_args, _add_pair_args, _add_prompt_args, _add_text_args,  # noqa: F401
                           _default_threads, _existing_file, _fmt_bytes, _parse_tokens, _print_json,
                           check_prompt_args, open_model, prompt_tokens, settings_from_args)
from qdbg.cli_model import (SYNTH_FIELDS, cmd_inspect, cmd_logits, cmd_quantize, cmd_synth,  # noqa: F401
                            cmd_tokenize)
from qdbg.errors import QdbgError, UsageError

EXIT_USAGE = 2
DEFAULT_TRACE_BUDGET = "64M"


def _session_from_args(args: argparse.Namespace, paths: dict[str, str], keep_values: bool = True):
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
                resyncs=getattr(args, "resyncs", None) or (), noise=bool(getattr(args, "noise", False)),
                attribution=getattr(args, "attribution", True), keep_values=keep_values)
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
    # values are read after the run only to save a trace: without one, let each op's go once measured
    s, names = _session_from_args(args, paths, keep_values=bool(args.trace))
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
