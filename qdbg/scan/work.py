"""The per-prompt work of `qdbg scan`: one function, `scan_prompt`, run inline, in worker
processes, or on Dask workers alike.

For one prompt (tokenized as `qdbg tokenize` does: specials parsed, BOS as the file asks; `chat`
wraps it in the file's template), A and B (and R) run in lockstep as llama.cpp runs them: the prompt
in micro-batches of n_ubatch tokens, then `gen` tokens decoded one at a time, each chosen by A's
argmax. Every position's logits are compared (qdbg.metrics.logits_compare); every op's A~B rel_rms
(qdbg.metrics.pair_metrics) finds the first op, in graph order, of any pass, inside a layer, where
rel_rms exceeds `threshold`. Models are opened once per process (`context_for`), memory-mapped.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qdbg import metrics
from qdbg.errors import QdbgError
from qdbg.numerics import DEFAULT_MODE, RunSettings
from qdbg.scan.prompts import PromptItem

REL_RMS_THRESHOLD = 0.05


@dataclass(frozen=True)
class ScanConfig:
    """Everything a worker needs to scan a prompt: model paths and how to run them (picklable)."""

    a: str
    b: str
    ref: str | None = None
    mode: str = DEFAULT_MODE
    settings: RunSettings = field(default_factory=RunSettings)
    chat: bool = False
    gen: int = 0
    noise: bool = False
    top_k: int = 10
    threshold: float = REL_RMS_THRESHOLD

    def paths(self) -> dict[str, str]:
        out = {"A": self.a, "B": self.b}
        if self.ref:
            out["R"] = self.ref
        return out


@dataclass
class PromptResult:
    """What the scan found on one prompt (plain Python values; `to_json` is the --json record).

    flips: positions where A's and B's top-1 differ; margins: per flip {pos, a, b (top-1 minus
    top-2 logit of each side), a_id, b_id, and with R ref_top1 and ref_agrees ('A', 'B' or
    'neither'), with --noise noise (the floor) and within_noise}. kl_*: KL(A||B), KL(B||A) over all
    positions (nats), kl_ab_max_pos where KL(A||B) peaks; overlap: mean top-k overlap; first_*_over: the first op over the threshold.
    """

    index: int
    line: int
    text: str
    n_tokens: int = 0
    n_gen: int = 0
    tokens: list[int] = field(default_factory=list)
    flips: list[int] = field(default_factory=list)
    margins: list[dict[str, Any]] = field(default_factory=list)
    kl_ab_mean: float | None = None
    kl_ab_max: float | None = None
    kl_ba_mean: float | None = None
    kl_ba_max: float | None = None
    kl_ab_max_pos: int | None = None
    overlap: float | None = None
    first_layer_over: int | None = None
    first_op_over: str | None = None
    first_tensor_over: str | None = None
    first_over_rel_rms: float | None = None
    ref_closer: str | None = None
    kl_ref_a_mean: float | None = None
    kl_ref_b_mean: float | None = None
    n_within_noise: int | None = None
    error: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ScanContext:
    """The models of one ScanConfig, opened once per process; `lock` serializes threads."""

    def __init__(self, config: ScanConfig) -> None:
        from qdbg.model import Model
        from qdbg.session import check_match

        self.config = config
        self.models = {lab: Model(p) for lab, p in config.paths().items()}
        check_match(self.models)
        self.lock = threading.Lock()
        self.n_ctx = min(min(m.config.n_ctx_train for m in self.models.values()),
                         config.settings.n_ctx_padded)


_CONTEXTS: dict[ScanConfig, ScanContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def context_for(config: ScanConfig) -> ScanContext:
    """This process's ScanContext of `config`, opened on first use."""
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(config)
        if ctx is None:
            ctx = _CONTEXTS[config] = ScanContext(config)
        return ctx


def tokenize(model: Any, item: PromptItem, chat: bool) -> list[int]:
    """The prompt's token ids, as `qdbg tokenize [--chat]` gives them."""
    tok = model.tokenizer
    if item.messages is not None:
        text = tok.render_chat([{"role": r, "content": c} for r, c in item.messages], add_generation_prompt=True)
    elif chat:
        text = tok.render_chat([{"role": "user", "content": item.text or ""}], add_generation_prompt=True)
    else:
        text = item.text or ""
    return tok.encode(text, add_bos=None, parse_special=True)


def scan_prompt(config: ScanConfig, item: PromptItem) -> PromptResult:
    """Scan one prompt; a problem with this prompt alone (too long, no tokens, a template error)
    becomes the result's `error` instead of an exception."""
    t0 = time.perf_counter()
    ctx = context_for(config)
    res = PromptResult(index=item.index, line=item.line, text=item.label())
    with ctx.lock:
        try:
            _scan(ctx, item, res)
        except QdbgError as e:
            res.error = str(e)
    res.seconds = time.perf_counter() - t0
    return res


def _scan(ctx: ScanContext, item: PromptItem, res: PromptResult) -> None:
    cfg = ctx.config
    toks = tokenize(ctx.models["A"], item, cfg.chat)
    if not toks:
        raise QdbgError("the prompt tokenizes to no tokens")
    res.n_tokens = len(toks)
    if len(toks) + cfg.gen > ctx.n_ctx:
        extra = f" + {cfg.gen} generated" if cfg.gen else ""
        raise QdbgError(f"the prompt has {len(toks)} tokens{extra}, more than the context ({ctx.n_ctx})")
    logits, over = lockstep(ctx.models, toks, cfg)
    res.n_gen = cfg.gen
    res.tokens = toks + over.pop("generated")
    res.__dict__.update(over)
    lc = metrics.logits_compare(logits["A"], logits["B"], k=cfg.top_k)
    pos = lc["positions"]
    kab = [p["kl_ab"] for p in pos if p["kl_ab"] is not None]
    kba = [p["kl_ba"] for p in pos if p["kl_ba"] is not None]
    res.kl_ab_mean, res.kl_ab_max = (float(np.mean(kab)), max(kab)) if kab else (None, None)
    res.kl_ba_mean, res.kl_ba_max = (float(np.mean(kba)), max(kba)) if kba else (None, None)
    if kab:
        res.kl_ab_max_pos = next(p["pos"] for p in pos if p["kl_ab"] == res.kl_ab_max)
    res.overlap = float(np.mean([p["topk_overlap"] for p in pos]))
    res.flips = list(lc["flip_positions"])
    res.margins = [{"pos": p, "a": pos[p]["a"]["margin"], "b": pos[p]["b"]["margin"],
                    "a_id": pos[p]["a"]["top"][0]["id"], "b_id": pos[p]["b"]["top"][0]["id"]}
                   for p in res.flips]
    if "R" in logits:
        _compare_ref(logits, res, cfg.top_k)
    if cfg.noise:
        from qdbg.noise import noise_floor, within_noise

        nf = noise_floor(ctx.models["A"], res.tokens, mode=cfg.mode, settings=cfg.settings,
                         decode=cfg.gen, base_logits=logits["A"])
        for m in res.margins:
            m["noise"] = nf.at(m["pos"])
            m["within_noise"] = within_noise(m["a"], m["b"], m["noise"])
        res.n_within_noise = sum(m["within_noise"] for m in res.margins)


def _compare_ref(logits: dict[str, np.ndarray], res: PromptResult, k: int) -> None:
    """KL(R||A), KL(R||B) means; which side is closer to R; per flip, who agrees with R's top-1."""
    ra = metrics.logits_compare(logits["R"], logits["A"], k=k)["positions"]
    rb = metrics.logits_compare(logits["R"], logits["B"], k=k)["positions"]
    ka = [p["kl_ab"] for p in ra if p["kl_ab"] is not None]
    kb = [p["kl_ab"] for p in rb if p["kl_ab"] is not None]
    if ka and kb:
        res.kl_ref_a_mean, res.kl_ref_b_mean = float(np.mean(ka)), float(np.mean(kb))
        d = res.kl_ref_a_mean - res.kl_ref_b_mean
        res.ref_closer = "tie" if d == 0 else ("A" if d < 0 else "B")
    for m in res.margins:
        r_top = ra[m["pos"]]["a"]["top"][0]["id"]
        m["ref_top1"] = r_top
        m["ref_agrees"] = "A" if r_top == m["a_id"] else ("B" if r_top == m["b_id"] else "neither")


def lockstep(models: dict[str, Any], tokens: list[int], cfg: ScanConfig) -> tuple[dict[str, np.ndarray], dict]:
    """Run every side over the prompt (micro-batches) and `cfg.gen` decodes (A's argmax) in lockstep.

    Returns ({side: logits [n_pos, n_vocab]}, {generated, first_layer_over, first_op_over,
    first_tensor_over, first_over_rel_rms}). An op's A~B rel_rms is taken over its whole pass; the
    first op over the threshold is the earliest in graph order among all passes (only ops before
    the best found so far are measured in later passes, which gives the same answer faster).
    """
    from qdbg.engine.forward import Engine

    engines = {lab: Engine(m, cfg.mode, settings=cfg.settings) for lab, m in models.items()}
    rows: dict[str, list[np.ndarray]] = {lab: [] for lab in engines}
    passes = engines["A"].ubatches(tokens)
    generated: list[int] = []
    best: tuple[int, Any, float] | None = None   # (op index in its pass, OpResult of A, rel_rms)
    n_pass = len(passes) + cfg.gen
    for i in range(n_pass):
        chunk = passes[i] if i < len(passes) else [generated[-1]]
        gens = [e.forward(chunk) for e in engines.values()]
        for j, results in enumerate(zip(*gens)):
            ra, rb = results[0], results[1]
            if ra.name == "result_output":
                for lab, r in zip(engines, results):
                    rows[lab].append(r.value)
            elif ra.layer is not None and (best is None or j < best[0]):
                rel = metrics.pair_metrics(ra.value, rb.value, top_n=0)["rel_rms"]
                if rel is not None and not math.isnan(rel) and rel > cfg.threshold:
                    best = (j, ra, rel)
        if i >= len(passes) - 1 and len(generated) < cfg.gen:
            generated.append(int(np.argmax(rows["A"][-1][-1])))
    logits = {lab: np.concatenate(r) for lab, r in rows.items()}
    info = {"generated": generated, "first_layer_over": None, "first_op_over": None,
            "first_tensor_over": None, "first_over_rel_rms": None}
    if best is not None:
        _, op, rel = best
        info.update(first_layer_over=op.layer, first_op_over=op.name, first_tensor_over=op.weight,
                    first_over_rel_rms=rel)
    return logits, info
