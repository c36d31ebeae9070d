"""`qdbg scan A B --prompts FILE`: many prompts, where A and B disagree, ranked; the CLI layer.

The work is qdbg.scan (the same per-prompt function inline, in processes or on Dask); this file
parses the command line, draws the progress bar, and prints the table, the summary, --json and
--csv. Ctrl-C stops the scan and still prints what is done (exit status 130).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

from qdbg.errors import UsageError
from qdbg.scan import PromptResult, ScanConfig, rank, read_prompts, summarize

EXIT_INTERRUPTED = 130
CSV_FIELDS = ("rank", "index", "line", "text", "n_tokens", "n_gen", "n_flips", "flips", "first_flip",
              "margin_a", "margin_b", "kl_ab_mean", "kl_ab_max", "kl_ba_mean", "kl_ba_max", "overlap",
              "first_layer_over", "first_op_over", "first_tensor_over", "ref_closer", "n_within_noise",
              "error")


def add_scan_parser(sub: Any) -> None:
    """Register `scan` on the CLI's subparsers."""
    from qdbg.cli import _add_numerics_args

    p = sub.add_parser("scan", help="run many prompts through A and B; rank where they disagree")
    p.add_argument("a", metavar="A.gguf")
    p.add_argument("b", metavar="B.gguf")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="one prompt per line, or JSONL with \"text\" (or \"messages\" for chat)")
    p.add_argument("--chat", action="store_true", help="wrap each text prompt in the file's chat template")
    p.add_argument("--ref", metavar="R.gguf", help="a higher-precision reference: which side is closer")
    p.add_argument("--gen", type=int, default=0, metavar="N",
                   help="also compare N tokens decoded after each prompt (chosen by A)")
    _add_numerics_args(p)
    p.add_argument("--noise", action="store_true",
                   help="mark flips within llama.cpp's own variation (another ubatch split, flash-attn)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, metavar="N", help="worker processes (default: the number of cores)")
    g.add_argument("--dask", metavar="ADDRESS", help="run on a Dask distributed scheduler (qdbg[cluster])")
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="k of the top-k overlap (default 10)")
    p.add_argument("--rows", type=int, default=20, metavar="N", help="table rows to print (default 20)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--csv", metavar="FILE", help="also write one row per prompt as CSV ('-' is stdout)")
    p.add_argument("--open", action="store_true", help="open the worst prompt in the TUI at its first flip")
    p.set_defaults(fn=cmd_scan)


def _config(args: argparse.Namespace) -> ScanConfig:
    """Check the models (files, same shapes) here, once, and build the workers' config."""
    from qdbg.cli import _existing_file, settings_from_args
    from qdbg.model import Model
    from qdbg.session import check_match

    paths = {"A": args.a, "B": args.b, **({"R": args.ref} if args.ref else {})}
    check_match({lab: Model(_existing_file(p)) for lab, p in paths.items()})
    absolute = {lab: str(Path(p).resolve()) for lab, p in paths.items()}
    return ScanConfig(a=absolute["A"], b=absolute["B"], ref=absolute.get("R"), mode=args.mode,
                      settings=settings_from_args(args), chat=args.chat, gen=args.gen,
                      noise=args.noise, top_k=args.top_k)


def _runner(args: argparse.Namespace, config: ScanConfig, items: list) -> Iterator[PromptResult]:
    from qdbg.scan import runners

    if args.dask:
        return runners.run_dask(config, items, args.dask)
    workers = min(args.workers or os.cpu_count() or 1, len(items))
    if workers <= 1:
        return runners.run_inline(config, items)
    return runners.run_processes(config, items, workers)


def cmd_scan(args: argparse.Namespace) -> int:
    if args.gen < 0:
        raise UsageError(f"--gen must be >= 0 (got {args.gen})")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {args.top_k})")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {args.workers})")
    items = read_prompts(args.prompts)
    if args.csv and args.csv != "-":
        from qdbg.util import check_output

        check_output(args.csv, text=True)
    config = _config(args)
    if args.dask:
        from qdbg.scan.runners import connect_dask

        connect_dask(args.dask).close()  # an unreachable scheduler is one line before any work
    results: list[PromptResult] = []
    interrupted = False
    try:
        with _progress(len(items)) as advance, closing(_runner(args, config, items)) as it:
            for res in it:
                results.append(res)
                advance(res)
    except KeyboardInterrupt:
        interrupted = True
        print(f"qdbg: interrupted: {len(results)} of {len(items)} prompts scanned", file=sys.stderr)
    ranked = rank(results)
    summary = summarize(ranked, len(items), interrupted)
    if args.json:
        from qdbg.cli import _print_json
        from qdbg.cli_run import jsonable

        _print_json(jsonable({"prompts": [r.to_json() for r in ranked], "summary": summary}))
    else:
        _print_table(ranked, summary, args.rows)
    if args.csv:
        write_csv(args.csv, ranked)
        if args.csv != "-":
            print(f"wrote {args.csv}", file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    if args.open and ranked and ranked[0].error is None:
        return open_worst(config, ranked[0])
    return 0


class _progress:
    """A Rich progress bar on stderr (prompts done, rate, ETA) when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar: Any = None

    def __enter__(self):
        if not sys.stderr.isatty():
            return lambda res: None
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Progress(TextColumn("scan"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("scan", total=self.total, rate="")

        t0 = time.monotonic()

        def advance(res: PromptResult) -> None:
            self.bar.advance(task)
            done = self.bar.tasks[0].completed
            self.bar.update(task, rate=f"{done / max(time.monotonic() - t0, 1e-9):.2f} prompts/s")

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def _short(text: str, n: int = 40) -> str:
    t = text.replace("\n", " ")
    return t if len(t) <= n else t[: n - 1] + "…"


def _first_flip(r: PromptResult) -> str:
    if not r.margins:
        return "-"
    m = r.margins[0]
    noise = "" if "within_noise" not in m else (" ~noise" if m["within_noise"] else "")
    return f"@{m['pos']} {_fmt(m['a'], '.3f')}/{_fmt(m['b'], '.3f')}{noise}"


def _print_table(ranked: list[PromptResult], summary: dict, rows: int) -> None:
    from rich.console import Console
    from rich.table import Table

    piped = not sys.stdout.isatty()
    con = Console(width=1 << 16, soft_wrap=True, no_color=True, highlight=False) if piped else Console()
    headers = ("#", "line", "prompt", "tok", "flips", "1st flip: margins A/B", "KL mean", "KL max",
               "ovl", "first > 5%", "R", "noise")
    cells, errors = [], []
    for i, r in enumerate(ranked[:max(rows, 0)], 1):
        if r.error is not None:
            cells.append((str(i), str(r.line), _short(r.text, 28), str(r.n_tokens or "-"), "-", "error", *["-"] * 6))
            errors.append(f"line {r.line}: {r.error}")
            continue
        noise = "-" if r.n_within_noise is None else f"{r.n_within_noise}/{len(r.flips)}"
        cells.append((str(i), str(r.line), _short(r.text, 28), str(r.n_tokens + r.n_gen), str(len(r.flips)),
                      _first_flip(r), _fmt(r.kl_ab_mean), _fmt(r.kl_ab_max), _fmt(r.overlap, ".2f"),
                      r.first_op_over or "-", r.ref_closer or "-", noise))
    t = Table(*headers, box=None, pad_edge=False)
    # one line per prompt: only the prompt gives way (…) on a narrow terminal, numbers stay whole
    for j, c in enumerate(t.columns):
        c.no_wrap = True
        c.min_width = max([len(headers[j])] + [len(row[j]) for row in cells])
    t.columns[2].overflow, t.columns[2].min_width = "ellipsis", 8
    for row in cells:
        t.add_row(*row)
    con.print(t)
    for e in errors:
        con.print(e, highlight=False)
    if len(ranked) > rows:
        con.print(f"({len(ranked) - rows} more prompts: --rows N, --json or --csv for all)", highlight=False)
    for line in summary_lines(summary):
        con.print(line, highlight=False)


def summary_lines(s: dict) -> list[str]:
    """The summary block as text lines."""
    out = [f"scanned {s['n_scanned']} of {s['n_prompts']} prompts"
           + (f" ({s['n_errors']} could not be scanned)" if s["n_errors"] else "")
           + (" (interrupted)" if s["interrupted"] else ""),
           f"prompts with a flip: {s['prompts_with_flip']}; flipped positions: "
           f"{s['flipped_positions']} of {s['positions']}",
           f"mean KL(A||B) {_fmt(s['kl_ab_mean'])} nats per position, max {_fmt(s['kl_ab_max'])}"]
    if s["first_over_ops"]:
        out.append("first over rel_rms 5%: ops " + ", ".join(f"{k} ({v})" for k, v in s["first_over_ops"]))
    if s["first_over_tensors"]:
        out.append("  tensors " + ", ".join(f"{k} ({v})" for k, v in s["first_over_tensors"]))
    if "ref_closer" in s:
        rc = s["ref_closer"]
        out.append(f"closer to R: A in {rc['A']}, B in {rc['B']} prompts" + (f", tie in {rc['tie']}" if rc["tie"] else ""))
    if "flips_within_noise" in s:
        out.append(f"flips within the noise floor: {s['flips_within_noise']} of {s['flipped_positions']}")
    return out


def csv_row(rank_no: int, r: PromptResult) -> dict[str, Any]:
    m = r.margins[0] if r.margins else {}
    return {"rank": rank_no, "index": r.index, "line": r.line, "text": r.text, "n_tokens": r.n_tokens,
            "n_gen": r.n_gen, "n_flips": len(r.flips), "flips": " ".join(map(str, r.flips)),
            "first_flip": m.get("pos"), "margin_a": m.get("a"), "margin_b": m.get("b"),
            "kl_ab_mean": r.kl_ab_mean, "kl_ab_max": r.kl_ab_max, "kl_ba_mean": r.kl_ba_mean,
            "kl_ba_max": r.kl_ba_max, "overlap": r.overlap, "first_layer_over": r.first_layer_over,
            "first_op_over": r.first_op_over, "first_tensor_over": r.first_tensor_over,
            "ref_closer": r.ref_closer, "n_within_noise": r.n_within_noise, "error": r.error}


def write_csv(path: str, ranked: list[PromptResult]) -> None:
    """One row per prompt, in severity order, through qdbg.util.open_output ('-' is stdout)."""
    from qdbg.util import open_output

    with open_output(path) as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for i, r in enumerate(ranked, 1):
            w.writerow(csv_row(i, r))


def session_at_worst(config: ScanConfig, res: PromptResult):
    """A Session of the prompt `res` run to the logits of its first flip (or, with no flip, of the
    position where KL(A||B) peaks), scoped to that position."""
    from qdbg.model import Model
    from qdbg.errors import QdbgError
    from qdbg.session import Session

    models = {lab: Model(p) for lab, p in config.paths().items()}
    try:
        pieces = models["A"].tokenizer.piece
    except QdbgError:
        pieces = None
    s = Session(models, res.tokens[:res.n_tokens], mode=config.mode, pieces=pieces, settings=config.settings)
    s.prompt_text = res.text
    if res.n_gen:
        s.decode(res.n_gen, "a")
    target = res.flips[0] if res.flips else (res.kl_ab_max_pos or 0)
    while True:
        st = s.run_to("result_output")
        if st.reason != "target" or target in st.record.positions:
            break
    s.set_scope(target)
    return s


def open_worst(config: ScanConfig, res: PromptResult) -> int:
    """`--open`: the worst prompt in the TUI, at its first flip."""
    from qdbg import cli

    s = session_at_worst(config, res)
    where = f"flip at position {res.flips[0]}" if res.flips else "largest KL"
    return cli._run_tui(s, title=f"qdbg scan: prompt {res.index + 1} (line {res.line}), {where}")
