"""`qdbg run` and the headless `qdbg demo`: run a session to its end, report stops and the final comparison.

Part of the CLI layer (it prints with Rich). The JSON document is
{"stops": [{"op", "layer", "pass", "breakpoints", "metrics", "logits"?}], "breakpoints": [{"id", "expr",
"hits", ...}], "final": {...}, "tokens": [...]}. "pass" is the 0-based forward pass (one llama_decode
micro-batch), the word the report and the TUI use; the trace file's record field keeps its name `step`
(docs/TRACE_FORMAT.md). Token pieces are text, or null where a piece's bytes are not UTF-8, with the
bytes in hex beside them ("piece_bytes").
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable

from qdbg.breakpoints import variables_from
from qdbg.progress import Progress
from qdbg.session import Session, Stop

STOP_METRICS = ("rel_rms", "sqnr", "cos", "max_abs", "mean_abs", "max_rel", "sign_flips", "amp")
STOP_LOGITS = ("flip", "top1_agree", "kl_ab", "kl_ba", "js", "topk_overlap", "rank", "margin_a", "margin_b")
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
    """One breakpoint stop; at the logits it carries the logits variables (kl_ab, flip, ...) too."""
    rec = st.record
    assert rec is not None
    pair = rec.pair
    d = {"op": rec.name, "layer": rec.layer, "pass": rec.step,
         "breakpoints": [b.expr for b in st.breakpoints],
         "metrics": {k: pair.get(k) for k in STOP_METRICS}}
    if rec.logits and "A~B" in rec.logits:
        v = variables_from(logits=rec.logits["A~B"])
        d["logits"] = {k: v.get(k) for k in STOP_LOGITS}
    return d


def _piece_fields(s: Session) -> Callable[[dict], dict]:
    """Rewrite a top-k entry's piece as JSON text (null if not UTF-8) plus its bytes in hex."""
    try:
        tok = s.models["A"].tokenizer
    except Exception:  # a replay has no tokenizer: the trace's recorded pieces stay as they are
        return lambda e: e

    def fix(e: dict) -> dict:
        raw = tok.piece_bytes(int(e["id"]))
        try:
            text: str | None = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return {**e, "piece": text, "piece_bytes": raw.hex()}

    return fix


def final_json(s: Session) -> dict[str, Any]:
    f = s.final() or {}
    pos = (f.get("positions") or [{}])[-1]
    a, b = pos.get("a") or {}, pos.get("b") or {}
    fix = _piece_fields(s)
    return {
        "a_top_k": [fix(e) for e in a.get("top", [])], "b_top_k": [fix(e) for e in b.get("top", [])],
        "top1_agree": pos.get("top1_agree"), "kl_ab": pos.get("kl_ab"), "kl_ba": pos.get("kl_ba"),
        "js": pos.get("js"), "topk_overlap": pos.get("topk_overlap"),
        "rank_b_of_a_top1": pos.get("rank_b_of_a_top1"), "margin_a": a.get("margin"),
        "margin_b": b.get("margin"), "flip_positions": f.get("flip_positions", []),
    }


def run_session(s: Session, gen: int = 0, driver: str = "a", text_tokens=None,
                progress: Progress | None = None) -> list[Stop]:
    """Continue to every breakpoint and through `gen` decoded tokens; the stops, in order.

    `progress` (qdbg.progress) hears of each layer of each pass (a live Session only).
    """
    if gen:
        s.decode(gen, driver, text_tokens)
    poll = None if progress is None else _layer_poll(s, gen, progress)
    stops = []
    while True:
        st = s.cont(should_stop=poll)
        if st.reason != "breakpoint":
            break
        stops.append(st)
    return stops


def _layer_poll(s: Session, gen: int, progress: Progress) -> Callable[[], bool]:
    """A should_stop callback that never stops but reports the pass and layer the session is in."""
    n_layer = s.models["A"].config.n_layer
    n_pass = len(s.engines["A"].ubatches(s.prompt)) + gen
    seen = [None]

    def poll() -> bool:
        rec = s.current
        if rec is not None and rec.layer is not None and (rec.step, rec.layer) != seen[0]:
            seen[0] = (rec.step, rec.layer)
            progress(f"pass {rec.step + 1}/{n_pass}, layer {rec.layer + 1}/{n_layer}",
                     rec.step * n_layer + rec.layer, n_pass * n_layer)
        return False

    return poll


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_results(s: Session, stops: list[Stop], as_json: bool, names: dict[str, str]) -> None:
    if as_json:
        doc = {"models": names, "mode": s.mode, "numerics": s.numerics_info(),
               "tokens": s.tokens, "breakpoints": [b.to_json() for b in s.breakpoints],
               "stops": [stop_json(st) for st in stops], "final": final_json(s)}
        sys.stdout.write(json.dumps(jsonable(doc), allow_nan=False) + "\n")
        return
    from qdbg.cli_progress import plain_table, stdout_console

    con = stdout_console()
    con.print(f"A = {names['A']}   B = {names['B']}" + (f"   R = {names['R']}" if "R" in names else "")
              + f"   {len(s.tokens)} tokens", highlight=False)
    con.print(f"numerics: {s.numerics_text()}", highlight=False)
    for bp in s.breakpoints:
        con.print(f"breakpoint {bp.id}: {bp.expr}   hits {bp.hits}" + ("" if bp.enabled else "   (disabled)"),
                  highlight=False)
    if stops:
        t = plain_table("#", "op", "pass", "bp", *TABLE_METRICS, "kl", title="breakpoint stops (A vs B)")
        for i, st in enumerate(stops):
            d = stop_json(st)
            t.add_row(str(i + 1), d["op"], str(d["pass"]), ",".join(str(b.id) for b in st.breakpoints),
                      *(_fmt(d["metrics"][k]) for k in TABLE_METRICS), _fmt(d.get("logits", {}).get("kl_ab")))
        con.print(t)
    else:
        con.print("no breakpoint stopped the run")
    f = final_json(s)
    t = plain_table("#", "A token", "A logit", "A prob", "B token", "B logit", "B prob",
                    title="final top-k (last position)")
    for i, (a, b) in enumerate(zip(f["a_top_k"], f["b_top_k"])):
        t.add_row(str(i + 1), _token(a), _fmt(a["logit"]), _fmt(a.get("prob")),
                  _token(b), _fmt(b["logit"]), _fmt(b.get("prob")))
    con.print(t)
    verdict = "[bold green]top-1 agrees[/]" if f["top1_agree"] else "[bold red]TOP-1 FLIP[/]"
    con.print(f"{verdict}   KL(A||B) {_fmt(f['kl_ab'])}   KL(B||A) {_fmt(f['kl_ba'])}   JS {_fmt(f['js'])}   "
              f"overlap {_fmt(f['topk_overlap'])}   rank of A's top-1 in B {_fmt(f['rank_b_of_a_top1'])}   "
              f"margins A {_fmt(f['margin_a'])} B {_fmt(f['margin_b'])}", highlight=False)
    if f["flip_positions"]:
        con.print(f"top-1 differs at positions {f['flip_positions']}", highlight=False)


def _token(e: dict) -> str:
    """'id piece' for the text table: the piece's repr, or its bytes when they are not UTF-8."""
    if e.get("piece") is None and e.get("piece_bytes") is not None:
        return f"{e['id']} <{e['piece_bytes']}>"
    return f"{e['id']} {e.get('piece')!r}"
