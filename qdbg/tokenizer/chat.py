"""Chat templates: render a GGUF file's `tokenizer.chat_template` safely.

The template comes from the model file, so it is untrusted code. It runs in jinja2's
ImmutableSandboxedEnvironment, set up like transformers' apply_chat_template (trim_blocks, lstrip_blocks,
loopcontrols, a non-escaping `tojson`, `raise_exception`, `strftime_now`, `{% generation %}` blocks),
hardened further:

* before anything runs, the parsed template is searched for attribute or item access to names that
  start with an underscore (`x.__class__`, `x['__globals__']`, `x|attr('__init__')`); such a template
  is rejected with TemplateError;
* at run time every access the sandbox deems unsafe (underscore names, function/frame/code internals,
  list/dict mutators, `str.format` field lookups like '{0.__class__}') raises instead of yielding a
  silent Undefined;
* `*`, `**` and `range` are bounded, so a template cannot exhaust memory or time with huge strings.

Every failure, whether a sandbox violation, a syntax error, or the template's own raise_exception,
surfaces as qdbg.errors.TemplateError.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from qdbg.errors import TemplateError

__all__ = ["render_chat", "MAX_OUTPUT"]

MAX_OUTPUT = 1 << 20  # characters: bound for '*' repetition results and for the rendered prompt
_MAX_POW = 1 << 16


class _Generation(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask marker): renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template raised: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _bounded_mul(a: Any, b: Any) -> Any:
    for seq, k in ((a, b), (b, a)):
        if isinstance(seq, (str, list, tuple)) and isinstance(k, int) and len(seq) * k > MAX_OUTPUT:
            raise SecurityError(f"repetition of a {len(seq)}-long {type(seq).__name__} {k} times is too large")
    return operator.mul(a, b)


def _bounded_pow(a: Any, b: Any) -> Any:
    if isinstance(b, (int, float)) and abs(b) > _MAX_POW:
        raise SecurityError(f"exponent {b} is too large")
    return operator.pow(a, b)


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation])
        self.binop_table["*"] = _bounded_mul
        self.binop_table["**"] = _bounded_pow
        self.filters["tojson"] = _tojson
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")


_ENV: _Env | None = None


def _env() -> _Env:
    global _ENV
    if _ENV is None:
        _ENV = _Env()
    return _ENV


def _private(name: Any) -> bool:
    return isinstance(name, str) and name.startswith("_")


def _check_ast(tree: nodes.Template) -> None:
    """Reject attribute/item/attr-filter access to underscore names anywhere in the template."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            bad = node.attr if _private(node.attr) else None
        elif isinstance(node, nodes.Getitem):
            arg = node.arg
            bad = arg.value if isinstance(arg, nodes.Const) and _private(arg.value) else None
        else:
            bad = next((a.value for a in node.args if isinstance(a, nodes.Const) and _private(a.value)), None) \
                if node.name == "attr" else None
        if bad is not None:
            raise TemplateError(f"chat template reaches for the private attribute {bad!r}; refusing to run it")


def render_chat(template: str | None, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", **extra: Any) -> str:
    """Render `template` with messages/add_generation_prompt/bos_token/eos_token (+ `extra` variables)."""
    if template is None:
        raise TemplateError("the model file has no tokenizer.chat_template; give one with --chat-template FILE")
    if not isinstance(template, str):
        raise TemplateError(f"chat template must be a string, not {type(template).__name__}")
    msgs = _plain(messages)
    env = _env()
    try:
        tree = env.parse(template)
        _check_ast(tree)
        compiled = env.from_string(tree)
        out = compiled.render(messages=msgs, add_generation_prompt=bool(add_generation_prompt),
                              bos_token=bos_token, eos_token=eos_token, **extra)
    except TemplateError:
        raise
    except SecurityError as e:
        raise TemplateError(f"chat template blocked by the sandbox: {e}") from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from None
    except (jinja2.TemplateError, OverflowError, RecursionError, MemoryError, ArithmeticError, LookupError,
            TypeError, ValueError, AttributeError) as e:
        raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    if len(out) > MAX_OUTPUT:
        raise TemplateError(f"chat template produced {len(out)} characters (limit {MAX_OUTPUT})")
    return out


def _plain(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copy messages into plain dicts/lists/scalars (the template sees data, never caller objects)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TemplateError("messages must be a list of {'role': ..., 'content': ...} mappings")

    def conv(x: Any, depth: int = 0) -> Any:
        if depth > 32:
            raise TemplateError("messages nest too deeply")
        if x is None or isinstance(x, (str, bool, int, float)):
            return x
        if isinstance(x, Mapping):
            return {str(k): conv(v, depth + 1) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v, depth + 1) for v in x]
        raise TemplateError(f"message values must be plain data, not {type(x).__name__}")

    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TemplateError(f"message {i} is a {type(m).__name__}, not a mapping")
        out.append(conv(m))
    return out
