"""The command line's shared pieces: argument groups (prompt, numerics, pairs), prompt tokens,
opening models with one-line errors, JSON and byte formatting. Used by every `cli_*` module."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from qdbg.errors import UsageError

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
    p.add_argument("--no-attribution", dest="attribution", action="store_false",
                   help="skip A's op on B's input at every op (local/inherited error): a run takes about "
                        "a third less time, and 'where the divergence is born' is then not shown")


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
