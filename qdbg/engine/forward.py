"""The engine: a generator that runs one decoder forward pass and yields after every sub-op.

One function covers the four architectures; the ModelConfig flags switch the parts that differ
(Q/K/V biases, Q/K norms, post-norms, GEGLU, embedding scale, sliding windows). The op list is
llama.cpp's graph (src/models/llama.cpp, gemma3.cpp; build_norm/build_ffn/build_attn_mha in
llama-graph.cpp), and the names are its callback names.

Overrides: `overrides[name]` is either an array that replaces op `name`'s output, or a callable
`f(result) -> array | None` that may replace it (it sees the step, the positions and the
computed value); `overrides` may also be one such callable, asked about every op. `weight_overrides[tensor]` replaces a weight (another model's, for patching).
The KV cache is only committed when a pass runs to its end, so an abandoned pass leaves the
engine as it was.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np

from qdbg.engine import ops
from qdbg.engine.result import OpResult
from qdbg.engine.weights import Weight
from qdbg.errors import QdbgError, UsageError
from qdbg.numerics import DEFAULT_MODE, Numerics, RunSettings, make_numerics
from qdbg.progress import Progress

Override = Union[np.ndarray, Callable[[OpResult], "np.ndarray | None"]]

TOK_CH = ("token", "channel")
TOK_HEAD = ("token", "head", "dim")
SCORES = ("head", "token", "kv")


class Engine:
    """Runs one model; `forward(tokens)` appends tokens after what it has already seen."""

    def __init__(
        self,
        model: Any,
        mode: "str | Numerics" = DEFAULT_MODE,
        overrides: Mapping[str, Override] | Callable[[OpResult], "np.ndarray | None"] | None = None,
        weight_overrides: Mapping[str, Weight] | None = None,
        settings: RunSettings | None = None,
    ) -> None:
        self.model = model
        self.cfg = model.config
        self.numerics = make_numerics(mode, settings)
        self.mode = self.numerics.name
        # a mapping applies per op name; a bare callable is asked about every op
        self.hook = overrides if callable(overrides) else None
        self.overrides: dict[str, Override] = {} if callable(overrides) else dict(overrides or {})
        self.weight_overrides: dict[str, Weight] = dict(weight_overrides or {})
        self.reset()

    def reset(self) -> None:
        """Forget every token seen: empty KV cache, position 0."""
        self.k_cache: list[np.ndarray] = []
        self.v_cache: list[np.ndarray] = []
        self.tokens: list[int] = []
        self.n_steps = 0

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def weight(self, name: str) -> Weight:
        w = self.weight_overrides.get(name)
        return w if w is not None else self.model.weight(name)

    @property
    def settings(self) -> RunSettings:
        return self.numerics.settings

    def ubatches(self, tokens: Sequence[int]) -> list[list[int]]:
        """Split a prompt into llama.cpp's micro-batches of at most n_ubatch tokens."""
        n = self.settings.n_ubatch
        toks = [int(t) for t in tokens]
        return [toks[i:i + n] for i in range(0, len(toks), n)]

    def forward(self, tokens: Sequence[int]) -> Iterator[OpResult]:
        """Process `tokens` as one micro-batch (one llama.cpp graph) at the next positions; yield
        every sub-op's result. More tokens than n_ubatch is an error: split with `ubatches()`.

        The last result is `result_output`, the logits [n_tok, n_vocab].
        """
        cfg = self.cfg
        nx = self.numerics
        if len(tokens) > self.settings.n_ubatch:
            raise UsageError(f"{len(tokens)} tokens in one pass, more than the micro-batch size "
                             f"{self.settings.n_ubatch}: split them with ubatches()")
        ids = np.asarray(list(tokens), dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise UsageError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= cfg.n_vocab:
            bad = int(ids[(ids < 0) | (ids >= cfg.n_vocab)][0])
            raise UsageError(f"token id {bad} is outside the vocabulary (0..{cfg.n_vocab - 1})")
        n_tok, n_past = ids.size, self.n_past
        if n_past + n_tok > self.settings.n_ctx_padded:
            raise UsageError(f"{n_past + n_tok} tokens do not fit the context of {self.settings.n_ctx} "
                             f"(--ctx-size)")
        pos = np.arange(n_past, n_past + n_tok, dtype=np.int64)
        kv_pos = np.arange(0, n_past + n_tok, dtype=np.int64)
        step = self.n_steps
        new_k: list[np.ndarray] = []
        new_v: list[np.ndarray] = []
        env: dict[str, np.ndarray] = {}

        def emit(name: str, kind: str, layer: int | None, value: np.ndarray, axes: tuple[str, ...],
                 inputs: tuple[str, ...] = (), weight: str | None = None,
                 ggml: tuple[str | None, str | None] = (None, None)) -> OpResult:
            w = self.weight(weight) if weight else None
            res = OpResult(
                name=name, kind=kind, layer=layer, value=value, axes=axes, inputs=inputs,
                weight=weight, weight_type=w.qtype.name if w is not None else None,
                ggml_name=ggml[0], ggml_op=ggml[1], step=step, positions=tuple(int(p) for p in pos),
            )
            ov = self.overrides.get(name, self.hook)
            if ov is not None:
                rep = ov(res) if callable(ov) else ov
                if rep is not None:
                    rep = np.asarray(rep, dtype=np.float32)
                    if rep.shape != value.shape:
                        raise QdbgError(
                            f"override for '{name}' has shape {rep.shape}, expected {value.shape}"
                        )
                    res.computed, res.value = value, rep
            env[name] = res.value
            return res

        def mm(x: np.ndarray, tensor: str) -> np.ndarray:
            return nx.matmul(x, self.weight(tensor))

        def vec(tensor: str) -> np.ndarray:
            return self.weight(tensor).values

        def norm(name: str, layer: int | None, src: str, weight: str, x: np.ndarray | None = None,
                 axes: tuple[str, ...] = TOK_CH) -> OpResult:
            """build_norm: RMS norm of `src` (or its reshape `x`) times `weight`, llama.cpp's MUL node."""
            val = nx.rms_norm(env[src] if x is None else x, vec(weight), cfg.rms_eps)
            return emit(name, "norm", layer, val, axes, (src,), weight, (name, "MUL"))

        # --- embeddings ------------------------------------------------------------------
        emb = self.weight("token_embd.weight")
        yield emit("inp_embd", "embed", None, nx.get_rows(emb, ids), TOK_CH,
                   weight="token_embd.weight", ggml=("embd", "GET_ROWS"))
        cur = "inp_embd"
        if cfg.embd_scale:
            yield emit("inp_scaled", "scale", None,
                       nx.scale(env[cur], cfg.embd_scale), TOK_CH, (cur,),
                       ggml=("inp_scaled", "SCALE"))
            cur = "inp_scaled"

        hd, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_head_kv
        for il in range(cfg.n_layer):
            b = f"blk.{il}."
            L = lambda s: f"{s}-{il}"  # noqa: E731 - llama.cpp's "name-layer"
            inp = cur
            yield norm(L("attn_norm"), il, inp, b + "attn_norm.weight")
            x = L("attn_norm")
            for p in ("q", "k", "v"):
                nm = L(f"{p.upper()}cur")
                y = mm(env[x], b + f"attn_{p}.weight")
                op = "MUL_MAT"
                if cfg.qkv_bias:
                    y = nx.add(y, vec(b + f"attn_{p}.bias"))
                    op = "ADD"
                yield emit(nm, "matmul", il, y, TOK_CH, (x,), b + f"attn_{p}.weight", (nm, op))
            heads = {"Q": nh, "K": nkv}
            roped = {}
            rope_cache = nx.rope_cache(pos, cfg.n_rot, *cfg.rope_params(il))  # shared by Q and K
            for p in ("Q", "K"):
                src = L(f"{p}cur")
                h = env[src].reshape(n_tok, heads[p], hd)  # [n_tok, n_head*hd] -> [n_tok, n_head, hd]
                if cfg.qk_norm:
                    yield norm(L(f"{p}cur_normed"), il, src, b + f"attn_{p.lower()}_norm.weight", h, TOK_HEAD)
                    src = L(f"{p}cur_normed")
                    h = env[src]
                yield emit(L(f"{p}cur_rope"), "rope", il,
                           nx.rope(h, rope_cache, cfg.n_rot, cfg.rope_type == "neox"),
                           TOK_HEAD, (src,), ggml=(L(f"{p}cur"), "ROPE"))
                roped[p] = L(f"{p}cur_rope")
            # the KV cache holds K after RoPE and V; llama.cpp's cache is F16
            k_new = nx.kv_store(env[roped["K"]])
            v_new = nx.kv_store(env[L("Vcur")].reshape(n_tok, nkv, hd))
            k_all = np.concatenate([self.k_cache[il], k_new]) if il < len(self.k_cache) else k_new
            v_all = np.concatenate([self.v_cache[il], v_new]) if il < len(self.v_cache) else v_new
            new_k.append(k_all)
            new_v.append(v_all)
            q = env[roped["Q"]]
            if cfg.q_scale != 1.0:
                q = nx.scale(q, cfg.q_scale)
            mask = ops.causal_mask(pos, kv_pos, cfg.n_swa if cfg.is_swa(il) else 0)
            if self.settings.flash_attn:
                yield emit(L("kqv_out"), "attn", il,
                           nx.flash_attn(q, k_all, v_all, mask, cfg.softmax_scale), TOK_CH,
                           (roped["Q"], roped["K"], L("Vcur")), ggml=(None, "FLASH_ATTN_EXT"))
            else:
                yield emit(L("kq"), "scores", il, nx.attn_scores(q, k_all), SCORES,
                           (roped["Q"], roped["K"]), ggml=(L("kq"), "MUL_MAT"))
                yield emit(L("kq_soft_max"), "softmax", il,
                           nx.softmax(env[L("kq")], mask, cfg.softmax_scale), SCORES,
                           (L("kq"),), ggml=(L("kq_soft_max"), "SOFT_MAX"))
                yield emit(L("kqv_out"), "attn", il, nx.attn_values(env[L("kq_soft_max")], v_all),
                           TOK_CH, (L("kq_soft_max"), L("Vcur")), ggml=(L("kqv_out"), "CONT"))
            wo = b + "attn_output.weight"
            yield emit(L("attn_out"), "matmul", il, mm(env[L("kqv_out")], wo), TOK_CH,
                       (L("kqv_out"),), wo,
                       (L("attn_out") if cfg.arch == "llama" else None, "MUL_MAT"))
            att = L("attn_out")
            if cfg.post_norms:
                yield norm(L("attn_post_norm"), il, att, b + "post_attention_norm.weight")
                att = L("attn_post_norm")
            res_name = L("sa_out") if cfg.post_norms else L("ffn_inp")
            yield emit(res_name, "residual", il, nx.add(env[att], env[inp]), TOK_CH, (att, inp),
                       ggml=(res_name, "ADD"))
            yield norm(L("ffn_norm"), il, res_name, b + "ffn_norm.weight")
            x = L("ffn_norm")
            for p in ("gate", "up"):  # graph order: swiglu(gate, up) visits gate first
                wt = b + f"ffn_{p}.weight"
                yield emit(L(f"ffn_{p}"), "matmul", il, mm(env[x], wt), TOK_CH, (x,), wt,
                           (L(f"ffn_{p}"), "MUL_MAT"))
            if cfg.ffn_act == "gelu":
                act, val = L("ffn_geglu"), nx.geglu(env[L("ffn_gate")], env[L("ffn_up")])
            else:
                act, val = L("ffn_swiglu"), nx.swiglu(env[L("ffn_gate")], env[L("ffn_up")])
            yield emit(act, "act", il, val, TOK_CH, (L("ffn_gate"), L("ffn_up")), ggml=(act, "GLU"))
            wd = b + "ffn_down.weight"
            yield emit(L("ffn_out"), "matmul", il, mm(env[act], wd), TOK_CH, (act,), wd,
                       (L("ffn_out"), "MUL_MAT"))
            ffo = L("ffn_out")
            if cfg.post_norms:
                yield norm(L("ffn_post_norm"), il, ffo, b + "post_ffw_norm.weight")
                ffo = L("ffn_post_norm")
            yield emit(L("l_out"), "residual", il, nx.add(env[ffo], env[res_name]), TOK_CH,
                       (ffo, res_name), ggml=(L("l_out"), "ADD"))
            cur = L("l_out")
            # free what later ops no longer read
            for k in [k for k in env if k.endswith(f"-{il}") and k != cur]:
                del env[k]

        yield norm("result_norm", None, cur, "output_norm.weight")
        out_w = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
        logits = mm(env["result_norm"], out_w)
        if cfg.final_logit_softcap:
            logits = nx.softcap(logits, cfg.final_logit_softcap)
        final = emit("result_output", "logits", None, logits, ("token", "vocab"), ("result_norm",),
                     out_w, ("result_output", "MUL_MAT"))
        # commit the pass before handing out its last result
        self.k_cache, self.v_cache = new_k, new_v
        self.tokens.extend(int(t) for t in ids)
        self.n_steps += 1
        yield final

    def logits(self, tokens: Sequence[int], decode: int = 0, progress: Progress | None = None) -> np.ndarray:
        """Run straight through; the logits [n_tok, n_vocab] of `tokens` after what came before.

        As llama.cpp evaluates them: the first len(tokens) - decode tokens as a prompt split into
        micro-batches, then each of the last `decode` tokens alone (a generation step).
        `progress` (qdbg.progress) hears of each finished layer, counted over all passes.
        """
        toks = [int(t) for t in tokens]
        if not 0 <= decode <= len(toks):
            raise UsageError(f"--decode {decode} is more than the {len(toks)} tokens given")
        cut = len(toks) - decode
        passes = (self.ubatches(toks[:cut]) if cut else []) + [[t] for t in toks[cut:]]
        n_layer = self.cfg.n_layer
        rows = []
        for p, chunk in enumerate(passes):
            res = None
            for res in self.forward(chunk):
                if progress is not None and res.layer is not None and res.name.startswith("l_out"):
                    progress(f"pass {p + 1}/{len(passes)}, layer {res.layer + 1}/{n_layer}",
                             p * n_layer + res.layer + 1, len(passes) * n_layer)
            assert res is not None
            rows.append(res.value)
        return np.concatenate(rows) if len(rows) > 1 else rows[0]
