"""`qdbg bisect A B`: the few tensors of A that, taken from B (or R), fix the flip; the CLI layer.

The search is qdbg.bisect; this file reads the prompts, prints each chosen tensor (type before and
after, bytes added), the before/after top-1 and KL, the number of trials, and the llama-quantize
arguments that build the fixed file; `--recipe-out` saves them as a `--tensor-type-file`.
Exit status 0 when the target is met, 1 when it is not.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from qdbg.errors import UsageError


def add_bisect_parser(sub: Any) -> None:
    """Register `bisect` on the CLI's subparsers."""
    from qdbg.cli import _add_numerics_args, _add_text_args

    p = sub.add_parser("bisect", help="find the few tensors of A that, taken from B (or R), make A "
                       "pick B's top-1; print the llama-quantize recipe")
    p.add_argument("a", metavar="A.gguf")
    p.add_argument("b", metavar="B.gguf")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="text to tokenize with the model's own tokenizer")
    g.add_argument("--tokens", help="comma-separated token ids, used exactly as given")
    g.add_argument("--prompts", metavar="FILE",
                   help="one prompt per line (or JSONL with \"text\"/\"messages\"); each one's last position counts")
    _add_text_args(p)
    p.add_argument("--ref", metavar="R.gguf", help="a higher-precision file of the same model")
    p.add_argument("--from", dest="source", choices=("B", "R"), default="B",
                   help="take the upgraded tensors from B (default) or from R (needs --ref)")
    p.add_argument("--target", default="flip",
                   help="'flip' (A picks B's top-1 everywhere, default) or 'kl<X' (mean KL(B||A) < X)")
    p.add_argument("--max-trials", type=int, default=64, metavar="N",
                   help="at most N greedy trials (each a full forward of A per prompt; default 64)")
    p.add_argument("--patch", action="append", default=[], metavar="GLOB=SIDE",
                   help="start from A with these tensors taken from SIDE (the --from side), e.g. "
                        "'blk.*.ffn_down.weight=B'; they stay in the recipe (repeatable)")
    p.add_argument("--recipe-out", metavar="FILE", help="write the recipe as a llama-quantize --tensor-type-file")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the text")
    _add_numerics_args(p)
    p.set_defaults(fn=cmd_bisect)


def _prompts(args: argparse.Namespace, model: Any) -> list[list[int]]:
    from qdbg.cli import check_prompt_args, prompt_tokens

    if args.prompts is None:
        check_prompt_args(args)
        return [prompt_tokens(model, args)]
    from qdbg.scan import read_prompts
    from qdbg.scan.work import tokenize

    if args.system is not None or args.chat_template is not None:
        raise UsageError("--system / --chat-template apply to --prompt; put messages in the --prompts file")
    out = []
    for item in read_prompts(args.prompts):
        ids = tokenize(model, item, args.chat)
        if not ids:
            raise UsageError(f"{args.prompts}:{item.line}: the prompt tokenizes to no tokens")
        out.append(ids)
    if not out:
        raise UsageError(f"{args.prompts}: no prompts")
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _kl(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _print(res: Any, args: argparse.Namespace, n_prompts: int, pieces: Any) -> None:
    from qdbg.cli import _fmt_bytes

    def tok(i: int) -> str:
        return f"{i} {pieces(i)!r}"

    b, a = res.before, res.after
    print(f"target {res.target}: {'met' if res.met else 'NOT met'} after {res.trials} trials "
          f"({res.trials} x {n_prompts} forwards of A; {res.n_candidates} candidate tensors)")
    print(f"before: {len(b.flips)}/{n_prompts} top-1 differ, mean KL(B||A) {_kl(b.kl_mean)}")
    print(f"after:  {len(a.flips)}/{n_prompts} top-1 differ, mean KL(B||A) {_kl(a.kl_mean)}")
    for i in range(n_prompts):
        mark = "" if a.top1_a[i] == a.top1_b[i] else "   (still differs)"
        print(f"  prompt {i}: B {tok(b.top1_b[i])}; A {tok(b.top1_a[i])} -> {tok(a.top1_a[i])}{mark}")
    if res.upgrades:
        print(f"upgrades ({len(res.upgrades)}), from {args.source}:")
        w = max(len(u.tensor) for u in res.upgrades)
        for u in res.upgrades:
            print(f"  {u.tensor:<{w}}  {u.from_type:>5} -> {u.to_type:<5}  +{_fmt_bytes(u.bytes_added)}"
                  + ("  (--patch)" if u.local is None else f"  (local error {u.local:.4g})"))
        print(f"bytes added: {res.bytes_added} ({_fmt_bytes(res.bytes_added)}, "
              f"{_pct(res.fraction_added)} of A)")
    if res.recipe:
        pins = len(res.recipe) - len(res.upgrades)
        if pins:
            print(f"recipe: the upgrades plus {pins} pinned tensors that llama-quantize "
                  f"{res.ftype} would otherwise type differently from A (A's own overrides, or "
                  f"llama.cpp's attn_v/ffn_down counters, which skip overridden tensors)")
        src = "SRC.gguf" if args.source == "B" or not args.ref else args.ref
        dst = "A-fixed.gguf"
        ft = res.ftype or "FTYPE"
        print("llama-quantize " + shlex.join(res.tensor_type_args + [src, dst, ft]))
        if args.recipe_out:
            print(f"qdbg quantize {shlex.join([src, dst, ft])} --tensor-type-file {shlex.quote(args.recipe_out)}")
    for n in res.notes:
        print(f"note: {n}")


def _patched(args: argparse.Namespace, model_a: Any) -> list[str]:
    """The matrices of A that `--patch GLOB=SIDE` takes from the --from side, in file order."""
    import fnmatch

    from qdbg.live import Patch

    names: list[str] = []
    for text in args.patch:
        p = Patch.parse(text)
        if p.side != args.source:
            raise UsageError(f"--patch {text}: bisect takes tensors from {args.source} (--from); "
                             f"patch from the same side")
        hit = [n for n, t in model_a.tensors.items() if len(t.shape) == 2 and fnmatch.fnmatchcase(n, p.glob)]
        if not hit:
            raise UsageError(f"--patch {text}: no matrix of A matches {p.glob!r}")
        names += [n for n in hit if n not in names]
    return names


def cmd_bisect(args: argparse.Namespace) -> int:
    from qdbg.bisect import bisect, parse_target, recipe_text
    from qdbg.cli import _print_json, open_model, settings_from_args
    from qdbg.session import check_match
    from qdbg.util import check_output, write_text

    target = parse_target(args.target)
    if args.source == "R" and not args.ref:
        raise UsageError("--from R needs --ref R.gguf")
    if args.max_trials < 1:
        raise UsageError(f"--max-trials must be at least 1 (got {args.max_trials})")
    if args.recipe_out:
        check_output(args.recipe_out, text=True)
    settings = settings_from_args(args)
    models = {"A": open_model(args.a), "B": open_model(args.b)}
    if args.ref:
        models["R"] = open_model(args.ref)
    check_match(models)
    fixed = _patched(args, models["A"])
    prompts = _prompts(args, models["A"])
    log = None if args.json else (lambda s: print(s, file=sys.stderr))
    from qdbg.cli_progress import progress_bar

    with progress_bar("bisect") as progress:
        res = bisect(models["A"], models["B"], prompts, source=models[args.source], target=target,
                     mode=args.mode, settings=settings, max_trials=args.max_trials, log=log, fixed=fixed,
                     progress=progress)
    if args.recipe_out and res.met:
        write_text(args.recipe_out, recipe_text(res.recipe))
    if args.json:
        _print_json(res.to_json())
    else:
        tok = models["A"].tokenizer
        _print(res, args, len(prompts), tok.piece)
    return 0 if res.met else 1
