"""`qdbg run` and the headless `qdbg demo`: run a session to its end, report stops and the final comparison.

Part of the CLI layer (it prints with Rich). The JSON document is
{"stops": [{"op", "layer", "step", "breakpoints", "metrics"}], "final": {...}, "tokens": [...]}.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from qdbg.session import Session, Stop

STOP_METRICS = ("rel_rms", "sqnr", "cos", "max_abs", "mean_abs", "max_rel", "sign_flips", "amp")
TABLE_METRICS = ("rel_rms", "sqnr", "cos", "max_rel", "amp")


def jsonable(x: Any) -> Any:
    """Strict JSON: non-finite floats become the strings 'inf', '-inf', 'nan'."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def stop_json(st: Stop) -> dict[str, Any]:
    rec = st.record
    assert rec is not None
    pair = rec.pair
    return {"op": rec.name, "layer": rec.layer, "step": rec.step,
            "breakpoints": [b.expr for b in st.breakpoints],
            "metrics": {k: pair.get(k) for k in STOP_METRICS}}


def final_json(s: Session) -> dict[str, Any]:
    f = s.final() or {}
    pos = (f.get("positions") or [{}])[-1]
    a, b = pos.get("a") or {}, pos.get("b") or {}
    return {
        "a_top_k": a.get("top", []), "b_top_k": b.get("top", []),
        "top1_agree": pos.get("top1_agree"), "kl_ab": pos.get("kl_ab"), "kl_ba": pos.get("kl_ba"),
        "js": pos.get("js"), "topk_overlap": pos.get("topk_overlap"),
        "rank_b_of_a_top1": pos.get("rank_b_of_a_top1"), "margin_a": a.get("margin"),
        "margin_b": b.get("margin"), "flip_positions": f.get("flip_positions", []),
    }


def run_session(s: Session, gen: int = 0, driver: str = "a", text_tokens=None) -> list[Stop]:
    """Continue to every breakpoint and through `gen` decoded tokens; the stops, in order."""
    if gen:
        s.decode(gen, driver, text_tokens)
    stops = []
    while True:
        st = s.cont()
        if st.reason != "breakpoint":
            break
        stops.append(st)
    return stops


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_results(s: Session, stops: list[Stop], as_json: bool, names: dict[str, str]) -> None:
    if as_json:
        doc = {"models": names, "mode": s.mode, "numerics": s.numerics_info(),
               "tokens": s.tokens,
               "stops": [stop_json(st) for st in stops], "final": final_json(s)}
        sys.stdout.write(json.dumps(jsonable(doc), allow_nan=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"A = {names['A']}   B = {names['B']}" + (f"   R = {names['R']}" if "R" in names else "")
              + f"   {len(s.tokens)} tokens")
    con.print(f"numerics: {s.numerics_text()}", highlight=False)
    if stops:
        bps = {b.expr: b.id for st in stops for b in st.breakpoints}
        for expr, i in sorted(bps.items(), key=lambda kv: kv[1]):
            con.print(f"breakpoint {i}: {expr}")
        t = Table("#", "op", "step", "bp", *TABLE_METRICS, title="breakpoint stops (A vs B)")
        for i, st in enumerate(stops):
            d = stop_json(st)
            t.add_row(str(i + 1), d["op"], str(d["step"]), ",".join(str(bps[e]) for e in d["breakpoints"]),
                      *(_fmt(d["metrics"][k]) for k in TABLE_METRICS))
        con.print(t)
    else:
        con.print("no breakpoint stopped the run")
    f = final_json(s)
    t = Table("#", "A token", "A logit", "A prob", "B token", "B logit", "B prob",
              title="final top-k (last position)")
    for i, (a, b) in enumerate(zip(f["a_top_k"], f["b_top_k"])):
        t.add_row(str(i + 1), f"{a['id']} {a.get('piece')!r}", _fmt(a["logit"]), _fmt(a.get("prob")),
                  f"{b['id']} {b.get('piece')!r}", _fmt(b["logit"]), _fmt(b.get("prob")))
    con.print(t)
    verdict = "[bold green]top-1 agrees[/]" if f["top1_agree"] else "[bold red]TOP-1 FLIP[/]"
    con.print(f"{verdict}   KL(A||B) {_fmt(f['kl_ab'])}   KL(B||A) {_fmt(f['kl_ba'])}   JS {_fmt(f['js'])}   "
              f"overlap {_fmt(f['topk_overlap'])}   rank of A's top-1 in B {_fmt(f['rank_b_of_a_top1'])}   "
              f"margins A {_fmt(f['margin_a'])} B {_fmt(f['margin_b'])}")
    if f["flip_positions"]:
        con.print(f"top-1 differs at positions {f['flip_positions']}")
