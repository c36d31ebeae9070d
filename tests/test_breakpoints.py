"""Tests for qdbg.breakpoints: the expression language, its errors and the breakpoint list."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdbg.breakpoints import (
    ALIASES, BOOL, MAX_DEPTH, NUM, STR, VARIABLES, And, Bool, BreakpointList, Compare, Not, Num,
    Or, Str, Var, evaluate, parse, quote, unparse, variables_from,
)
from qdbg.errors import ExpressionError, QdbgError, TraceError
from qdbg.metrics import logits_compare, pair_metrics

OP = {"op": "ffn_up-5", "kind": "matmul", "layer": 5, "token": 3}


def ev(expr: str, **vs: object) -> bool:
    return evaluate(parse(expr), vs)


# ---- the brief's examples --------------------------------------------------------------------

@pytest.mark.parametrize("expr, true_vars, false_vars", [
    ("rel_rms > 0.01", {"rel_rms": 0.02}, {"rel_rms": 0.01}),
    ('cos < 0.999 and op ~ "ffn_*"', {"cos": 0.99, "op": "ffn_up-5"}, {"cos": 0.99, "op": "attn_q-5"}),
    ("max_rel > 0.5 and layer >= 5", {"max_rel": 0.6, "layer": 5}, {"max_rel": 0.6, "layer": 4}),
    ("sqnr < 25", {"sqnr": 24.9}, {"sqnr": float("inf")}),
    ("flip", {"flip": True}, {"flip": False}),
    ("nan", {"nan": True}, {"nan": False}),
    ("amp > 2", {"amp": 2.5}, {"amp": 2}),
])
def test_brief_examples(expr: str, true_vars: dict, false_vars: dict) -> None:
    node = parse(expr)
    assert evaluate(node, {**OP, **true_vars}) is True
    assert evaluate(node, {**OP, **false_vars}) is False
    assert evaluate(node, {}) is False  # everything absent


def test_ast_shapes() -> None:
    assert parse("rel_rms > 0.01") == Compare(">", Var("rel_rms"), Num(0.01))
    assert parse("nan or inf and flip") == Or((Var("nan"), And((Var("inf"), Var("flip")))))
    assert parse("not sqnr < 1e-3") == Not(Compare("<", Var("sqnr"), Num(0.001)))
    assert parse("layer == -2") == Compare("==", Var("layer"), Num(-2))
    assert parse("op == 'it\\'s'") == Compare("==", Var("op"), Str("it's"))
    assert parse("kl > .5 and pos == 3 and overlap < 1.") == And((
        Compare(">", Var("kl_ab"), Num(0.5)), Compare("==", Var("token"), Num(3)),
        Compare("<", Var("topk_overlap"), Num(1.0))))
    assert parse("((flip))") == Var("flip")
    assert parse("top1_agree == false") == Compare("==", Var("top1_agree"), Bool(False))
    assert isinstance(parse("layer == 5").right.value, int)  # type: ignore[union-attr]


def test_precedence() -> None:
    # not > and > or, like Python
    assert ev("flip or nan and inf", flip=True, nan=False, inf=False) is True
    assert ev("(flip or nan) and inf", flip=True, nan=False, inf=False) is False
    assert ev("not flip and nan", flip=False, nan=True) is True
    assert ev("not (flip and nan)", flip=True, nan=False) is True
    assert ev("not flip or nan", flip=True, nan=False) is False
    assert ev("not not flip", flip=True) is True
    assert ev("not rel_rms > 1", rel_rms=2) is False  # not binds looser than comparison
    assert ev("-1 < layer", layer=0) is True and ev("sqnr > -1e1", sqnr=-5) is True


def test_comparisons_and_types() -> None:
    for op_, want in (("<", False), ("<=", True), (">", False), (">=", True), ("==", True), ("!=", False)):
        assert ev(f"layer {op_} 5", layer=5) is want
    assert ev("flip == 1", flip=True) and ev("flip == true", flip=True) and ev("top1_agree == false", top1_agree=False)
    assert ev('kind == "matmul"', kind="matmul") and ev('op < "b"', op="a")
    assert ev("sign_flips", sign_flips=3) and not ev("sign_flips", sign_flips=0)
    assert ev('"x"') and not ev('""') and ev("1") and not ev("0")
    assert ev("(rel_rms > 1) == (cos < 0)", rel_rms=2, cos=-1)


def test_glob() -> None:
    assert ev('op ~ "ffn_*"', op="ffn_gate-0")
    assert ev('op ~ "attn_?-1*"', op="attn_q-12")
    assert ev('op ~ "*-[0-4]"', op="ffn_up-3") and not ev('op ~ "*-[0-4]"', op="ffn_up-7")
    assert not ev('op ~ "FFN_*"', op="ffn_up-5")  # case-sensitive
    assert not ev('op ~ "ffn"', op="ffn_up")  # whole-string match
    assert ev('"ffn_up-5" ~ "ffn*"')


def test_absent_values() -> None:
    # absent = missing, None or NaN: every comparison is False, != included; bare name is False
    for vs in ({}, {"amp": None}, {"amp": float("nan")}):
        for op_ in ("<", "<=", ">", ">=", "==", "!="):
            assert ev(f"amp {op_} 2", **vs) is False
        assert ev("amp", **vs) is False
        assert ev("not amp > 2", **vs) is True
        assert ev("not amp", **vs) is True
    assert ev('op ~ "*"') is False and ev('op == "*"', op="x") is False and ev("layer >= 0 or flip") is False
    assert ev("amp > 2 or rel_rms > 0.1", rel_rms=0.2) is True
    assert ev("layer != 5", layer=None) is False and ev("layer != 5", layer=4) is True
    # wrong runtime types behave as False, not as errors
    assert ev("layer > 1", layer="5") is False and ev('op ~ "x"', op=3) is False
    assert ev("layer > 1", layer=[5]) is False


def test_numpy_values() -> None:
    np = pytest.importorskip("numpy")
    assert ev("rel_rms > 0.5", rel_rms=np.float32(0.75)) and ev("flip", flip=np.bool_(True))
    assert ev("layer == 3", layer=np.int64(3))


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, column, fragment", [
    ("rel_rms > > 1", 11, "expected a value"),
    ("", 1, "empty"),
    ("   ", 4, "empty"),
    ('op == "ffn', 7, "unterminated string"),
    ("op == 'ffn\\", 7, "unterminated string"),
    ('op == "a\\nb"', 9, "unknown escape"),
    ("rel_rms > 1 2", 13, "after a complete expression"),
    ("rel_rms > 1)", 12, "after a complete expression"),
    ("(rel_rms > 1", 13, "expected ')' to close '(' at column 1"),
    ("rel_rms >", 10, "expected a value"),
    ("and flip", 1, "expected a value"),
    ("flip and", 9, "expected a value"),
    ("not", 4, "expected a value"),
    ("()", 2, "expected a value"),
    ("relrms > 1", 1, "unknown name 'relrms'"),
    ("flip and bogus", 10, "unknown name 'bogus'"),
    ("rel_rms = 1", 9, "use '=='"),
    ("flip && nan", 6, "use 'and'"),
    ("flip || nan", 6, "use 'or'"),
    ("!flip", 1, "use 'not'"),
    ("rel_rms > 1$", 12, "unexpected character '$'"),
    ("rel_rms > 1e", 12, "malformed number"),
    ("rel_rms > 1.2.3", 14, "malformed number"),
    ("layer > 5abc", 10, "malformed number"),
    ("layer > -x", 10, "'-' must be followed by a number"),
    ("layer > -", 10, "'-' must be followed by a number"),
    ("0 < cos < 1", 9, "do not chain"),
    ("op > 3", 4, "cannot compare string > number"),
    ('layer == "5"', 7, "cannot compare number == string"),
    ('cos ~ "x*"', 5, "'~' matches a string"),
    ("flip and not", 13, "expected a value"),
    ("layer > 1 or and", 14, "expected a value"),
])
def test_errors_with_column(expr: str, column: int, fragment: str) -> None:
    with pytest.raises(ExpressionError) as ei:
        parse(expr)
    assert ei.value.column == column, str(ei.value)
    assert ei.value.expr == expr
    assert fragment in str(ei.value)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ExpressionError) as ei:
        parse("foo")
    msg = str(ei.value)
    for name in [*VARIABLES, *ALIASES]:
        assert name in msg


def test_nesting_limit() -> None:
    ok = "(" * MAX_DEPTH + "flip" + ")" * MAX_DEPTH
    assert parse(ok) == Var("flip")
    with pytest.raises(ExpressionError) as ei:
        parse("(" * (MAX_DEPTH + 1) + "flip" + ")" * (MAX_DEPTH + 1))
    assert ei.value.column == MAX_DEPTH + 1
    with pytest.raises(ExpressionError):
        parse("not " * 10000 + "flip")
    assert len(parse(" and ".join(["flip"] * 5000)).items) == 5000  # type: ignore[union-attr]
    with pytest.raises(ExpressionError):
        parse(None)  # type: ignore[arg-type]


def test_no_python_eval() -> None:
    for evil in ("__import__('os').system('true')", "flip.__class__", "[1]", "{}", "lambda: 1", "op[0]"):
        with pytest.raises(ExpressionError):
            parse(evil)


# ---- unparse ---------------------------------------------------------------------------------

def test_unparse() -> None:
    assert unparse(parse("(flip or nan) and not (inf or flip)")) == "(flip or nan) and not (inf or flip)"
    assert unparse(parse("flip or (nan or inf)")) == "flip or (nan or inf)"
    assert unparse(parse("not (rel_rms > 1)")) == "not rel_rms > 1"
    assert unparse(parse("kl>1e400")) == "kl_ab > 1e999"
    assert unparse(parse("op == 'a\"b\\\\c'")) == 'op == "a\\"b\\\\c"'
    assert unparse(Compare("<", Num(float("-inf")), Var("sqnr"))) == "-1e999 < sqnr"
    assert quote('x"\\') == '"x\\"\\\\"'


# ---- hypothesis: never another exception; unparse round trip ----------------------------------

_ATOMS = ["rel_rms", "op", "flip", "kl", "layer", "1", "-2.5e-3", ".5", '"ffn_*"', "'a\\'b'", "true",
          "(", ")", "and", "or", "not", "<", "<=", ">", ">=", "==", "!=", "~", "-", "=", "!", "$",
          '"', "'", "\\", "1e", "1.2.", " ", "\t", "é"]


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(_ATOMS), max_size=25).map(" ".join),
                 st.lists(st.sampled_from(_ATOMS), max_size=25).map("".join)))
def test_any_text_parses_or_expression_error(src: str) -> None:
    try:
        node = parse(src)
    except ExpressionError as e:
        assert 1 <= e.column <= len(src) + 1
        return
    assert parse(unparse(node)) == node
    evaluate(node, {"rel_rms": 0.5, "op": "ffn_up-1", "flip": True, "kl_ab": 0.1})
    evaluate(node, {})


_NUM_NAMES = sorted(n for n, (t, _) in VARIABLES.items() if t in (NUM, BOOL))
_STR_NAMES = sorted(n for n, (t, _) in VARIABLES.items() if t == STR)
_num = st.one_of(
    st.integers(-10**30, 10**30).map(Num),
    st.floats(allow_nan=False).map(Num),
    st.sampled_from(_NUM_NAMES).map(Var),
    st.booleans().map(Bool),
)
_str = st.one_of(st.text(max_size=8).map(Str), st.sampled_from(_STR_NAMES).map(Var))
_cmp_num = st.builds(Compare, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _num, _num)
_cmp_str = st.builds(Compare, st.sampled_from(["<", "<=", ">", ">=", "==", "!=", "~"]), _str, _str)
_bool = st.recursive(
    st.one_of(_cmp_num, _cmp_str, _num, _str),
    lambda sub: st.one_of(
        sub.map(Not),
        st.lists(sub, min_size=2, max_size=4).map(lambda xs: And(tuple(xs))),
        st.lists(sub, min_size=2, max_size=4).map(lambda xs: Or(tuple(xs))),
        st.builds(Compare, st.sampled_from(["<", "==", "!="]), sub.map(Not), _num),  # (bool) vs number
    ),
    max_leaves=12,
)


@settings(max_examples=250, deadline=None)
@given(_bool)
def test_unparse_roundtrip(node: object) -> None:
    text = unparse(node)  # type: ignore[arg-type]
    assert parse(text) == node, text


# ---- variables_from --------------------------------------------------------------------------

def test_variables_from_metrics() -> None:
    pm = pair_metrics([0.5, 3.0, 4.0, float("nan")], [0.0, 3.0, 4.0, 1.0], input_rel_rms=0.05)
    v = variables_from(op="ffn_up-5", kind="matmul", layer=5, token=2, pair=pm)
    assert v["nan"] is True and v["inf"] is False and v["layer"] == 5 and "flip" not in v
    assert ev_vars("rel_rms > 0.05 and amp > 1 and op ~ 'ffn_*' and nan", v)
    lc = logits_compare([[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]])
    last = variables_from(op="result_output", logits=lc)
    assert last["flip"] is True and last["rank"] == 2 and "layer" not in last and "amp" not in last
    first = variables_from(logits=lc["positions"][0])
    assert first["flip"] is False and first["kl_ab"] == 0.0 and first["margin_a"] == 1.0
    assert not ev_vars("layer >= 0", last) and ev_vars("flip and kl > 0", last)


def ev_vars(expr: str, vs: dict) -> bool:
    return evaluate(parse(expr), vs)


# ---- BreakpointList --------------------------------------------------------------------------

def test_hits_enable_disable_toggle() -> None:
    bl = BreakpointList()
    b1 = bl.add("rel_rms > 0.1")
    b2 = bl.add("flip")
    assert (b1.id, b2.id, len(bl)) == (1, 2, 2) and b1.enabled and b1.hits == 0
    assert bl.check({"rel_rms": 0.2}) == [b1] and b1.hits == 1 and b2.hits == 0
    assert bl.check({"rel_rms": 0.2, "flip": True}) == [b1, b2] and b1.hits == 2
    bl.disable(1)
    assert bl.check({"rel_rms": 0.2}) == [] and b1.hits == 2  # disabled: not evaluated, no hit
    bl.enable(1)
    assert bl.toggle(1) is False and bl.toggle(1) is True
    assert bl.check({"rel_rms": 0.0}) == [] and b1.hits == 2
    assert bl.remove(2) is b2 and 2 not in bl and len(bl) == 1
    assert bl.add("nan").id == 3  # ids never reused
    for bad in (2, 99, "x", None):
        with pytest.raises(QdbgError):
            bl.get(bad)  # type: ignore[arg-type]
    with pytest.raises(QdbgError):
        bl.toggle(2)
    with pytest.raises(ExpressionError):
        bl.add("rel_rms >")
    assert [b.id for b in bl] == [1, 3]
    bl.clear()
    assert len(bl) == 0


def test_temporary_and_ignore() -> None:
    bl = BreakpointList()
    t = bl.add("layer == 3", temporary=True)
    keep = bl.add("layer >= 3")
    assert bl.check({"layer": 2}) == [] and len(bl) == 2
    assert bl.check({"layer": 3}) == [t, keep] and t.hits == 1 and t.id not in bl
    assert bl.check({"layer": 3}) == [keep] and keep.hits == 2
    bl.ignore(keep.id, 2)
    assert bl.check({"layer": 4}) == [] and bl.check({"layer": 4}) == []
    assert keep.hits == 4 and keep.ignore_count == 0
    assert bl.check({"layer": 4}) == [keep] and keep.hits == 5
    t2 = bl.add("flip", temporary=True, ignore_count=1)
    assert bl.check({"flip": True}) == [] and t2.id in bl  # ignored: not fired, not deleted
    assert bl.check({"flip": True}) == [t2] and t2.id not in bl


def test_add_op_quotes_safely() -> None:
    bl = BreakpointList()
    b = bl.add_op("ffn_up-5")
    assert b.expr == 'op == "ffn_up-5"'
    assert bl.check({"op": "ffn_up-5"}) == [b] and bl.check({"op": "ffn_up-50"}) == []
    for name in ['we"ird\\name', "it's", "a or b", "*"]:
        bo = bl.add_op(name)
        assert bo.cond == Compare("==", Var("op"), Str(name))
        assert bl.check({"op": name}) == [bo]
    assert "op ==" in str(b) and "hits=" in str(b)


def test_json_round_trip() -> None:
    bl = BreakpointList()
    bl.add("rel_rms > 0.01")
    bl.add('cos < 0.999 and op ~ "ffn_*"', temporary=True)
    bl.add("amp > 2", ignore_count=3)
    bl.check({"rel_rms": 1.0})
    bl.disable(3)
    bl.remove(1)
    data = json.loads(json.dumps(bl.to_json()))
    back = BreakpointList.from_json(data)
    assert [vars(b) for b in back] == [vars(b) for b in bl]
    assert back.add("flip").id == 4
    empty = BreakpointList.from_json({"version": 1, "breakpoints": []})
    assert len(empty) == 0 and empty.add("nan").id == 1


@pytest.mark.parametrize("data", [
    None, [], {"version": 2, "breakpoints": []}, {"version": 1}, {"version": 1, "breakpoints": {}},
    {"version": 1, "breakpoints": [{"id": 1}]},
    {"version": 1, "breakpoints": [{"id": 1, "expr": "rel_rms >", "enabled": True, "temporary": False,
                                    "hits": 0, "ignore_count": 0}]},
    {"version": 1, "breakpoints": [{"id": True, "expr": "flip", "enabled": True, "temporary": False,
                                    "hits": 0, "ignore_count": 0}]},
    {"version": 1, "breakpoints": [{"id": 0, "expr": "flip", "enabled": True, "temporary": False,
                                    "hits": 0, "ignore_count": 0}]},
    {"version": 1, "breakpoints": [{"id": 1, "expr": "flip", "enabled": True, "temporary": False,
                                    "hits": 0, "ignore_count": 0}] * 2},
    {"version": 1, "next_id": "3", "breakpoints": []},
])
def test_json_malformed(data: object) -> None:
    with pytest.raises(TraceError):
        BreakpointList.from_json(data)  # type: ignore[arg-type]


@settings(max_examples=250, deadline=None)
@given(_bool, st.integers(0, 10**6), st.integers(0, 3), st.sampled_from(_ATOMS))
def test_mutated_valid_text_parses_or_expression_error(node: object, at: int, cut: int, atom: str) -> None:
    text = unparse(node)  # type: ignore[arg-type]
    i = at % (len(text) + 1)
    src = text[:i] + atom + text[i + cut:]
    try:
        got = parse(src)
    except ExpressionError as e:
        assert 1 <= e.column <= len(src) + 1
        return
    assert parse(unparse(got)) == got


def test_edge_by_default_every_on_request():
    bl = BreakpointList()
    edge = bl.add("rel_rms > 0.05")
    every = bl.add("rel_rms > 0.05", every=True)
    hot, cold = {"rel_rms": 0.1}, {"rel_rms": 0.01}
    assert bl.check(hot, cold) == [edge, every]      # becomes true: both fire
    assert bl.check(hot, hot) == [every]             # still true: only `every`
    assert bl.check(hot, None) == [edge, every]      # start of a pass: nothing before
    assert bl.check(cold, hot) == []
    assert (edge.hits, every.hits) == (2, 3) and "[every op]" in str(every)
    again = BreakpointList.from_json(bl.to_json())
    assert [b.every for b in again] == [False, True]
