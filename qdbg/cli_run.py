"""`qdbg run` and the headless `qdbg demo`: run a session to its end, report stops and the final comparison.

Part of the CLI layer (it prints with Rich). The JSON document is
{"stops": [{"op", "layer", "pass", "breakpoints", "metrics", "logits"?}], "breakpoints": [{"id", "expr",
"hits", "every", ...}], "final": {..., "r_top_k"?, "A~R"?, "B~R"?}, "flips": [every flipped (pass,
position) with margins, swing, noise and verdict], "findings": {...} (qdbg.findings), "scope",
"interventions", "verdict": {the last position's verdict with its numbers: "decisive", "within llama.cpp's
own variation", "near-tie", ...}, "tokens": [...], "text": the decoded continuation or null}; every
stop's metrics carry local/inherited (attribution) and noise (--noise), findings.born ranks ops and
tensors by local error. Non-finite numbers are
{"$float": "nan" | "inf" | "-inf"}, as in traces. "pass" is the 0-based forward pass (one llama_decode
micro-batch), the word the report and the TUI use; the trace file's record field keeps its name `step`
(docs/TRACE_FORMAT.md). Token pieces are text, or null where a piece's bytes are not UTF-8, with the
bytes in hex beside them ("piece_bytes").
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any, Callable

from qdbg.breakpoints import variables_from
from qdbg.progress import Progress
from qdbg.records import LogitsPosition, PairMetrics
from qdbg.session import Session, Stop

STOP_METRICS = tuple(PairMetrics.variables())   # the breakpoint variables of the pair metrics
STOP_LOGITS = tuple(LogitsPosition.variables()) + tuple(LogitsPosition.SIDE_VARIABLES)
TABLE_METRICS = ("rel_rms", "local", "inherited", "sqnr", "cos", "amp")
N_BORN = 8
"""Ops and tensors listed under "where the divergence is born" in the text output."""


def jsonable(x: Any) -> Any:
    """Strict JSON, the one encoding qdbg writes everywhere (qdbg.records.to_json_value):
    a non-finite float is {"$float": "nan" | "inf" | "-inf"}."""
    from qdbg.records import to_json_value

    return to_json_value(x)


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
    """The last pass's comparison at its last position: A's, B's (and R's) top-k, the A~B figures,
    and with R the A~R and B~R figures (KL, top-1 agreement)."""
    f = s.final()
    pos = f.positions[-1].to_json() if f is not None and f.positions else {}
    a, b = pos.get("a") or {}, pos.get("b") or {}
    fix = _piece_fields(s)
    out = {
        "pass": None, "position": pos.get("pos"),
        "a_top_k": [fix(e) for e in a.get("top", [])], "b_top_k": [fix(e) for e in b.get("top", [])],
        "top1_agree": pos.get("top1_agree"), "kl_ab": pos.get("kl_ab"), "kl_ba": pos.get("kl_ba"),
        "js": pos.get("js"), "topk_overlap": pos.get("topk_overlap"),
        "rank_b_of_a_top1": pos.get("rank_b_of_a_top1"), "margin_a": a.get("margin"),
        "margin_b": b.get("margin"), "flip_positions": [] if f is None else list(f.flip_positions),
    }
    rec = next((r for r in reversed(s.history) if r.logits), None)
    if rec is not None:
        out["pass"] = rec.step
        for key in ("A~R", "B~R"):
            q = rec.logits.get(key)
            if q is not None and q.positions:
                p = q.positions[-1]
                if key == "A~R":
                    out["r_top_k"] = [fix(e) for e in p.b.top]
                out[key] = {"top1_agree": p.top1_agree, "kl": p.kl_ab, "kl_r": p.kl_ba, "js": p.js,
                            "rank_r_of_top1": p.rank_b_of_a_top1, "rel_rms": rec.pairs[key].rel_rms}
    return out


def flips_json(s: Session) -> list[dict[str, Any]]:
    """Every flipped (pass, position) of A vs B in the run, with margins, swing and verdict."""
    from qdbg.findings import flips

    fix = _piece_fields(s)
    out = []
    for f in flips(s.history):
        if f.flip:
            d = asdict(f)
            for side in ("a", "b", "r"):
                if d[f"{side}_id"] is not None:
                    e = fix({"id": d[f"{side}_id"], "piece": d[f"{side}_piece"]})
                    d[f"{side}_piece"] = e["piece"]
                    if "piece_bytes" in e:
                        d[f"{side}_piece_bytes"] = e["piece_bytes"]
            d["because"] = f.because()
            out.append(d)
    return out


def verdict_json(s: Session) -> dict[str, Any] | None:
    """The final verdict of the last pass's last position: 'decisive', "within llama.cpp's own
    variation", 'near-tie' (or 'unweighable') for a flip, 'safe'/'fragile' when A and B agree,
    with the numbers (qdbg.findings.Flip)."""
    from qdbg.findings import flips

    rec = next((r for r in reversed(s.history) if r.logits), None)
    if rec is None:
        return None
    last = [f for f in flips([rec], every=True)]
    if not last:
        return None
    f = last[-1]
    return {"pass": f.step, "pos": f.pos, "flip": f.flip, "verdict": f.verdict, "because": f.because(),
            "margin_a": f.margin_a, "margin_b": f.margin_b, "swing": f.swing, "near_tie": f.noise,
            "noise_floor": f.noise_floor, "noise_shadows": rec.logits["A~B"].noise_shadows}


def decoded_text(s: Session) -> str | None:
    """The decoded continuation (tokens after the prompt) as text; None when nothing was decoded."""
    new = s.tokens[len(s.prompt):]
    if not new:
        return None
    try:
        return s.models["A"].tokenizer.decode(new)
    except Exception:  # a replay has no tokenizer: join the recorded pieces
        return "".join(str(s.pieces.get(t, f"<{t}>")) if isinstance(s.pieces, dict) else f"<{t}>" for t in new)


def run_session(s: Session, gen: int = 0, driver: str = "a", text_tokens=None,
                progress: Progress | None = None, max_stops: int | None = None) -> list[Stop]:
    """Continue to every breakpoint and through `gen` decoded tokens; the stops, in order.

    `progress` (qdbg.progress) hears of each layer of each pass (a live Session only). After
    `max_stops` stops the run ends there (what ran is what the final comparison shows).
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
        if max_stops is not None and len(stops) >= max_stops:
            break
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
        from qdbg.findings import Findings

        doc = {"models": names, "mode": s.mode, "numerics": s.numerics_info(), "scope": s.scope.to_json(),
               "interventions": s.interventions(),
               "tokens": s.tokens, "text": decoded_text(s), "breakpoints": [b.to_json() for b in s.breakpoints],
               "stops": [stop_json(st) for st in stops], "final": final_json(s), "flips": flips_json(s),
               "verdict": verdict_json(s), "findings": Findings.of(s.history).to_json()}
        sys.stdout.write(json.dumps(jsonable(doc), allow_nan=False) + "\n")
        return
    from qdbg.cli_progress import plain_table, stdout_console

    con = stdout_console()
    con.print(f"A = {names['A']}   B = {names['B']}" + (f"   R = {names['R']}" if "R" in names else "")
              + f"   {len(s.tokens)} tokens", highlight=False)
    con.print(f"numerics: {s.numerics_text()}   scope: {s.scope}", highlight=False)
    for iv in s.interventions():
        con.print(f"intervention: {iv['label']}", highlight=False)
    text = decoded_text(s)
    if text is not None:
        con.print(f"decoded: {text!r}", highlight=False)
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
    r_top = f.get("r_top_k")
    t = plain_table("#", "A token", "A logit", "A prob", "B token", "B logit", "B prob",
                    *(("R token", "R logit", "R prob") if r_top else ()),
                    title=f"final top-k (pass {_fmt(f['pass'])}, position {_fmt(f['position'])})")
    for i, (a, b) in enumerate(zip(f["a_top_k"], f["b_top_k"])):
        r = r_top[i] if r_top and i < len(r_top) else None
        t.add_row(str(i + 1), _token(a), _fmt(a["logit"]), _fmt(a.get("prob")),
                  _token(b), _fmt(b["logit"]), _fmt(b.get("prob")),
                  *((_token(r), _fmt(r["logit"]), _fmt(r.get("prob"))) if r else (("", "", "") if r_top else ())))
    con.print(t)
    verdict = "[bold green]top-1 agrees[/]" if f["top1_agree"] else "[bold red]TOP-1 FLIP[/]"
    con.print(f"{verdict}   KL(A||B) {_fmt(f['kl_ab'])}   KL(B||A) {_fmt(f['kl_ba'])}   JS {_fmt(f['js'])}   "
              f"overlap {_fmt(f['topk_overlap'])}   rank of A's top-1 in B {_fmt(f['rank_b_of_a_top1'])}   "
              f"margins A {_fmt(f['margin_a'])} B {_fmt(f['margin_b'])}", highlight=False)
    for key in ("A~R", "B~R"):
        if key in f:
            q = f[key]
            con.print(f"{key}: top-1 {'agrees' if q['top1_agree'] else 'DIFFERS'}   KL({key[0]}||R) {_fmt(q['kl'])}   "
                      f"KL(R||{key[0]}) {_fmt(q['kl_r'])}   JS {_fmt(q['js'])}   rel_rms {_fmt(q['rel_rms'])}",
                      highlight=False)
    _print_born(con, s)
    v = verdict_json(s)
    if v is not None:
        con.print(f"verdict (pass {v['pass']}, position {v['pos']}): {v['because']}", highlight=False)
    flips = flips_json(s)
    if flips:
        t = plain_table("pass", "pos", "A picks", "B picks", "margin A", "margin B", "swing", "near-tie", "floor",
                        "verdict",
                        *(("R picks",) if any(x["r_id"] is not None for x in flips) else ()),
                        title=f"top-1 flips ({len(flips)})")
        for x in flips:
            tok = {side: _token({"id": x[f"{side}_id"], "piece": x[f"{side}_piece"],
                                 "piece_bytes": x.get(f"{side}_piece_bytes")}) for side in ("a", "b", "r")}
            t.add_row(str(x["step"]), str(x["pos"]), tok["a"], tok["b"], _fmt(x["margin_a"]), _fmt(x["margin_b"]),
                      _fmt(x["swing"]), _fmt(x["noise"]), _fmt(x["noise_floor"]), x["verdict"],
                      *((tok["r"] if x["r_id"] is not None else "-",)
                        if any(y["r_id"] is not None for y in flips) else ()))
        con.print(t)
    else:
        con.print("no top-1 flip at any measured position (scope: {})".format(s.scope), highlight=False)


def _print_born(con: Any, s: Session) -> None:
    """'where the divergence is born': ops and tensors ranked by the error they add themselves."""
    from qdbg.cli_progress import plain_table
    from qdbg.findings import divergence_born

    born = divergence_born(s.history, top=N_BORN)
    if not born.ops:
        return
    t = plain_table("op", "pass", "tensor", "types A/B", "local", "inherited", "rel_rms",
                    title="where the divergence is born (A vs B, relative to ||B||)")
    for b in born.ops:
        t.add_row(b.name, str(b.step), b.weight or "-", f"{b.type_a or '-'}/{b.type_b or '-'}", _fmt(b.local),
                  _fmt(b.inherited), _fmt(b.total))
    con.print(t)


def _token(e: dict) -> str:
    """'id piece' for the text table: the piece's repr, or its bytes when they are not UTF-8."""
    if e.get("piece") is None and e.get("piece_bytes") is not None:
        return f"{e['id']} <{e['piece_bytes']}>"
    return f"{e['id']} {e.get('piece')!r}"
