"""Breakpoint conditions: a small expression language over an op's metrics and identity.

    expr    := or
    or      := and ('or' and)*
    and     := not ('and' not)*
    not     := 'not' not | cmp
    cmp     := primary [('<' | '<=' | '>' | '>=' | '==' | '!=' | '~') primary]
    primary := NUMBER | '-' NUMBER | STRING | 'true' | 'false' | NAME | '(' expr ')'

Numbers: 3, 0.5, .5, 1e-3. Strings: "..." or '...' with escapes \\ \" \'. `~` is a case-sensitive
glob match (fnmatch.fnmatchcase: * ? [seq]) of a string against a pattern. Comparisons do not
chain. Names are checked at parse time (VARIABLES, ALIASES), as are operand types: strings
compare only with strings, numbers with numbers or booleans (true == 1).

Absent values: a variable that does not apply at an op (missing from the variables dict, None,
or NaN) is *absent*. Every comparison with an absent operand is False, `!=` included; a bare
absent name is False, so `not amp > 2` is True where amp is absent. A bare present name is true
when non-zero / non-empty.

Parsing is a hand-written tokenizer and recursive descent into an AST of frozen dataclasses;
the input is never handed to Python's eval/compile. Errors are qdbg.errors.ExpressionError
with the 1-based column of the fault. `unparse` prints an AST back as parseable text.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Union

from qdbg.errors import ExpressionError, QdbgError

NUM, STR, BOOL = "number", "string", "bool"
def _variables() -> dict[str, tuple[str, str]]:
    """Every breakpoint variable, its type and meaning; the metric ones come from the fields
    declared in qdbg.records (one place), the rest describe the op."""
    from qdbg.records import LogitsPosition, PairMetrics

    v: dict[str, tuple[str, str]] = {name: (NUM, doc) for name, (_, doc) in PairMetrics.variables().items()}
    v["nan"] = (BOOL, "any NaN or Inf on either side")
    v["inf"] = (BOOL, "any +-Inf on either side")
    v.update(op=(STR, "op name, e.g. ffn_up-5"), kind=(STR, "op kind"),
             weight=(STR, "GGUF tensor the op reads, e.g. blk.5.ffn_up.weight (absent if none)"),
             layer=(NUM, "layer index (absent outside layers)"), token=(NUM, "token position"))
    for name, (f, doc) in LogitsPosition.variables().items():
        v[name] = (BOOL if f in ("flip", "top1_agree") else NUM, doc)
    v.update({name: (NUM, doc) for name, (_, doc) in LogitsPosition.SIDE_VARIABLES.items()})
    return v


VARIABLES: dict[str, tuple[str, str]] = _variables()
ALIASES = {"kl": "kl_ab", "pos": "token", "overlap": "topk_overlap"}
MAX_DEPTH = 50  # nesting of '(' and 'not'
_CMP = ("<", "<=", ">", ">=", "==", "!=", "~")
_DIGITS = "0123456789"
_KW = ("and", "or", "not", "true", "false")
_NUM_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HINT = {"=": "use '==' to compare", "!": "use 'not'", "&": "use 'and'", "|": "use 'or'"}


# ---- AST -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Num:
    value: Union[int, float]


@dataclass(frozen=True)
class Str:
    value: str


@dataclass(frozen=True)
class Bool:
    value: bool


@dataclass(frozen=True)
class Var:
    name: str  # canonical (aliases resolved)


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Compare:
    op: str
    left: Node
    right: Node


Node = Union[Num, Str, Bool, Var, Not, And, Or, Compare]


# ---- tokenizer -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tok:
    kind: str  # num str name kw op ( ) - end
    text: str
    col: int  # 1-based
    value: Any = None


def _tokenize(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        c, col = src[i], i + 1
        if c in " \t\r\n":
            i += 1
        elif c in _DIGITS or (c == "." and i + 1 < n and src[i + 1] in _DIGITS):
            m = _NUM_RE.match(src, i)
            assert m is not None
            j = m.end()
            if j < n and (src[j].isalnum() or src[j] in "._"):
                raise ExpressionError(f"malformed number {src[i:j + 1]!r}", src, j + 1)
            t = m.group()
            v: Union[int, float] = int(t) if t.isdigit() and len(t) <= 300 else float(t)
            toks.append(_Tok("num", t, col, v))
            i = j
        elif c.isascii() and (c.isalpha() or c == "_"):
            m = _NAME_RE.match(src, i)
            assert m is not None
            t = m.group()
            toks.append(_Tok("kw" if t in _KW else "name", t, col))
            i = m.end()
        elif c in "\"'":
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise ExpressionError("unterminated string", src, col)
                if src[j] == c:
                    break
                if src[j] == "\\":
                    if j + 1 >= n:
                        raise ExpressionError("unterminated string", src, col)
                    if src[j + 1] not in "\\\"'":
                        raise ExpressionError(f"unknown escape '\\{src[j + 1]}' in string", src, j + 1)
                    j += 1
                buf.append(src[j])
                j += 1
            toks.append(_Tok("str", src[i:j + 1], col, "".join(buf)))
            i = j + 1
        elif src.startswith(("<=", ">=", "==", "!="), i):
            toks.append(_Tok("op", src[i:i + 2], col))
            i += 2
        elif c in "<>~":
            toks.append(_Tok("op", c, col))
            i += 1
        elif c in "()-":
            toks.append(_Tok(c, c, col))
            i += 1
        else:
            hint = f" ({_HINT[c]})" if c in _HINT else ""
            raise ExpressionError(f"unexpected character {c!r}{hint}", src, col)
    toks.append(_Tok("end", "", n + 1))
    return toks


# ---- parser ----------------------------------------------------------------------------------

def _desc(t: _Tok) -> str:
    return "end of expression" if t.kind == "end" else repr(t.text)


class _Parser:
    def __init__(self, src: str) -> None:
        self.src, self.toks, self.i, self.depth = src, _tokenize(src), 0, 0

    def err(self, msg: str, col: int) -> ExpressionError:
        return ExpressionError(msg, self.src, col)

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def is_kw(self, word: str) -> bool:
        return self.tok.kind == "kw" and self.tok.text == word

    def nest(self, t: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.err(f"expression nested deeper than {MAX_DEPTH}", t.col)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise self.err("empty expression", self.tok.col)
        node, _ = self.or_()
        if self.tok.kind != "end":
            raise self.err(f"unexpected {_desc(self.tok)} after a complete expression", self.tok.col)
        return node

    def _chain(self, word: str, sub: Any, cls: type) -> tuple[Node, str]:
        node, typ = sub()
        items = [node]
        while self.is_kw(word):
            self.i += 1
            items.append(sub()[0])
        return (cls(tuple(items)), BOOL) if len(items) > 1 else (node, typ)

    def or_(self) -> tuple[Node, str]:
        return self._chain("or", self.and_, Or)

    def and_(self) -> tuple[Node, str]:
        return self._chain("and", self.not_, And)

    def not_(self) -> tuple[Node, str]:
        if not self.is_kw("not"):
            return self.cmp()
        self.nest(self.tok)
        self.i += 1
        node = Not(self.not_()[0])
        self.depth -= 1
        return node, BOOL

    def cmp(self) -> tuple[Node, str]:
        left, lt = self.primary()
        if self.tok.kind != "op":
            return left, lt
        op = self.tok
        self.i += 1
        right, rt = self.primary()
        if op.text == "~" and (lt, rt) != (STR, STR):
            raise self.err(f"'~' matches a string against a pattern, got {lt} ~ {rt}", op.col)
        if (lt == STR) != (rt == STR):
            raise self.err(f"cannot compare {lt} {op.text} {rt}", op.col)
        if self.tok.kind == "op":
            raise self.err(f"comparisons do not chain; use 'and' before {_desc(self.tok)}", self.tok.col)
        return Compare(op.text, left, right), BOOL

    def primary(self) -> tuple[Node, str]:
        t = self.tok
        if t.kind == "num":
            self.i += 1
            return Num(t.value), NUM
        if t.kind == "-":
            nxt = self.toks[self.i + 1]
            if nxt.kind != "num":
                raise self.err(f"'-' must be followed by a number, found {_desc(nxt)}", nxt.col)
            self.i += 2
            return Num(-nxt.value), NUM
        if t.kind == "str":
            self.i += 1
            return Str(t.value), STR
        if t.kind == "kw" and t.text in ("true", "false"):
            self.i += 1
            return Bool(t.text == "true"), BOOL
        if t.kind == "name":
            name = ALIASES.get(t.text, t.text)
            if name not in VARIABLES:
                known = ", ".join(sorted([*VARIABLES, *ALIASES]))
                raise self.err(f"unknown name {t.text!r}; known names: {known}", t.col)
            self.i += 1
            return Var(name), VARIABLES[name][0]
        if t.kind == "(":
            self.nest(t)
            self.i += 1
            node, typ = self.or_()
            if self.tok.kind != ")":
                raise self.err(f"expected ')' to close '(' at column {t.col}, found {_desc(self.tok)}",
                               self.tok.col)
            self.i += 1
            self.depth -= 1
            return node, typ
        after = f" after {self.toks[self.i - 1].text!r}" if self.i else ""
        raise self.err(f"expected a value{after}, found {_desc(t)}", t.col)


def parse(src: str) -> Node:
    """Parse breakpoint expression `src` into an AST; raises ExpressionError (1-based column)."""
    if not isinstance(src, str):
        raise ExpressionError(f"expression must be a string, got {type(src).__name__}")
    return _Parser(src).parse()


# ---- unparser --------------------------------------------------------------------------------

def quote(s: str) -> str:
    """`s` as a double-quoted string literal of this language."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _prec(n: Node) -> int:
    return {Or: 1, And: 2, Not: 3, Compare: 4}.get(type(n), 5)


def unparse(node: Node) -> str:
    """Print an AST as text that parses back to an equal AST, with minimal parentheses."""
    def wrap(child: Node, min_prec: int) -> str:
        s = unparse(child)
        return s if _prec(child) >= min_prec else f"({s})"

    if isinstance(node, Or):
        return " or ".join(wrap(c, 2) for c in node.items)
    if isinstance(node, And):
        return " and ".join(wrap(c, 3) for c in node.items)
    if isinstance(node, Not):
        return "not " + wrap(node.operand, 3)
    if isinstance(node, Compare):
        return f"{wrap(node.left, 5)} {node.op} {wrap(node.right, 5)}"
    if isinstance(node, Num):
        v = node.value
        if isinstance(v, float) and math.isinf(v):
            return "1e999" if v > 0 else "-1e999"
        return repr(v)
    if isinstance(node, Str):
        return quote(node.value)
    if isinstance(node, Bool):
        return "true" if node.value else "false"
    if isinstance(node, Var):
        return node.name
    raise QdbgError(f"unparse: not an expression node: {node!r}")


# ---- evaluation ------------------------------------------------------------------------------

def _present(v: Any) -> Any:
    """A variable's value, or None when absent (None, NaN, or a type the language has no use for)."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()  # numpy scalar
        except (TypeError, ValueError):
            return None
    if isinstance(v, float) and math.isnan(v):
        return None
    return v if isinstance(v, (bool, int, float, str)) else None


def _truthy(v: Any) -> bool:
    return v is not None and (v != "" if isinstance(v, str) else v != 0)


def _compare(op: str, a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    if isinstance(a, str) != isinstance(b, str):
        return False
    if op == "~":
        return isinstance(a, str) and fnmatch.fnmatchcase(a, b)
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[op]


def _value(node: Node, vs: Mapping[str, Any]) -> Any:
    if isinstance(node, (Num, Str, Bool)):
        return node.value
    if isinstance(node, Var):
        return _present(vs.get(node.name))
    if isinstance(node, Not):
        return not _truthy(_value(node.operand, vs))
    if isinstance(node, And):
        return all(_truthy(_value(c, vs)) for c in node.items)
    if isinstance(node, Or):
        return any(_truthy(_value(c, vs)) for c in node.items)
    if isinstance(node, Compare):
        return _compare(node.op, _value(node.left, vs), _value(node.right, vs))
    raise QdbgError(f"evaluate: not an expression node: {node!r}")


def evaluate(node: Node, variables: Mapping[str, Any]) -> bool:
    """Truth of `node` given canonical variable names -> values; absent names make comparisons False."""
    return _truthy(_value(node, variables))


def variables_from(*, op: str | None = None, kind: str | None = None, layer: int | None = None,
                   token: int | None = None, pair: Mapping[str, Any] | None = None,
                   logits: Mapping[str, Any] | None = None, pos: int = -1,
                   weight: str | None = None) -> dict[str, Any]:
    """Variables dict from an op's identity, its pair metrics (qdbg.records.PairMetrics or the
    dict of metrics.pair_metrics) and, at the logits, a logits comparison (position `pos`, default
    the last) or one of its positions. Absent values are left out."""
    from qdbg.records import LogitsPosition, PairMetrics

    v: dict[str, Any] = {"op": op, "kind": kind, "layer": layer, "token": token, "weight": weight}
    if pair is not None:
        for name, (f, _) in PairMetrics.variables().items():
            v[name] = pair.get(f)
        inf = (pair.get("inf_a") or 0) + (pair.get("inf_b") or 0)
        v["inf"] = inf > 0
        v["nan"] = inf + (pair.get("nan_a") or 0) + (pair.get("nan_b") or 0) > 0
    if logits is not None:
        p = logits
        if "positions" in logits:
            ps = logits["positions"]
            p = ps[pos] if ps else {}
        for name, (f, _) in LogitsPosition.variables().items():
            v[name] = p.get(f)
        for name, (side, _) in LogitsPosition.SIDE_VARIABLES.items():
            v[name] = (p.get(side) or {}).get("margin")
    return {k: x for k, x in v.items() if x is not None}


def literal_tests(node: Node) -> list[tuple[str, str, str]]:
    """(variable, operator, string) for every comparison of a variable with a string literal in
    `node`, either way round: what the debugger checks against the ops that exist."""
    out: list[tuple[str, str, str]] = []
    if isinstance(node, Compare):
        for a, b in ((node.left, node.right), (node.right, node.left)):
            if isinstance(a, Var) and isinstance(b, Str):
                out.append((a.name, node.op, b.value))
    elif isinstance(node, (And, Or)):
        for it in node.items:
            out += literal_tests(it)
    elif isinstance(node, Not):
        out += literal_tests(node.operand)
    return out
