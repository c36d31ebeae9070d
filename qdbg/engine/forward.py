"""The engine: walks one pass's op list (qdbg.engine.graph) and yields after every sub-op.

Each op is computed by `Engine.compute`/`_compute` from its inputs with the engine's Numerics (the
rounding-sensitive arithmetic of a mode); the list itself, llama.cpp's graph order and names, is
data shared with the debugger's catalogue and with attribution.

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
from qdbg.engine.graph import SCORES, TOK_CH, TOK_HEAD, Op, last_reads, pass_ops  # noqa: F401
from qdbg.engine.result import OpResult
from qdbg.engine.weights import Weight
from qdbg.errors import QdbgError, UsageError
from qdbg.numerics import DEFAULT_MODE, Numerics, RunSettings, make_numerics
from qdbg.progress import Progress

Override = Union[np.ndarray, Callable[[OpResult], "np.ndarray | None"]]


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
        self._ops: list[Op] | None = None  # the pass's op list, built on first use (pass_ops)
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

    def pass_ops(self) -> list[Op]:
        """The ops of one pass of this model with these settings, in order (qdbg.engine.graph);
        built once per engine (the config and settings do not change)."""
        if self._ops is None:
            self._ops = pass_ops(self.cfg, self.settings.flash_attn)
            self._free_after = last_reads(self._ops)
            self._by_name = {o.name: o for o in self._ops}
        return self._ops

    def op(self, name: str) -> Op:
        """The op of a pass named `name`; QdbgError if this engine's pass has none."""
        self.pass_ops()
        op = self._by_name.get(name)
        if op is None:
            raise QdbgError(f"{name}: not an op of this engine's pass")
        return op

    def forward(self, tokens: Sequence[int]) -> Iterator[OpResult]:
        """Process `tokens` as one micro-batch (one llama.cpp graph) at the next positions; yield
        every sub-op's result. More tokens than n_ubatch is an error: split with `ubatches()`.

        The last result is `result_output`, the logits [n_tok, n_vocab].
        """
        cfg = self.cfg
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
        ctx = PassContext(ids, np.arange(n_past, n_past + n_tok, dtype=np.int64), self, self)
        positions = tuple(int(p) for p in ctx.pos)
        ops = self.pass_ops()
        free_after = self._free_after
        env: dict[str, np.ndarray] = {}
        for i, op in enumerate(ops):
            value = self._compute(op, [env[n] for n in op.inputs], ctx)
            w = self.weight(op.weight) if op.weight else None
            res = OpResult(
                name=op.name, kind=op.kind, layer=op.layer, value=value, axes=op.axes, inputs=op.inputs,
                weight=op.weight, weight_type=w.qtype.name if w is not None else None,
                ggml_name=op.ggml_name, ggml_op=op.ggml_op, step=self.n_steps, positions=positions,
            )
            ov = self.overrides.get(op.name, self.hook)
            if ov is not None:
                rep = ov(res) if callable(ov) else ov
                if rep is not None:
                    rep = np.asarray(rep, dtype=np.float32)
                    if rep.shape != value.shape:
                        raise QdbgError(
                            f"override for '{op.name}' has shape {rep.shape}, expected {value.shape}"
                        )
                    res.computed, res.value = value, rep
            env[op.name] = res.value
            for name in free_after.get(i, ()):  # what later ops no longer read
                env.pop(name, None)
            if op.name == "result_output":
                # commit the pass (its KV rows, its tokens) before handing out its last result
                self.k_cache = [ctx.kv[il][0] for il in range(cfg.n_layer)]
                self.v_cache = [ctx.kv[il][1] for il in range(cfg.n_layer)]
                self.tokens.extend(int(t) for t in ids)
                self.n_steps += 1
            yield res

    def compute(self, op: Op, inputs: Sequence[np.ndarray], positions: Sequence[int],
                kv: "Engine | None" = None) -> np.ndarray:
        """One op of `pass_ops()` evaluated on `inputs` (the values of `op.inputs`, in order) at
        token `positions`, with this engine's weights and numerics. The attention ops also read the
        KV cache of earlier passes: `kv`'s (default this engine's) — for attribution, another
        side's inputs come with that side's cache. Pure: no engine state changes."""
        pos = np.asarray(positions, dtype=np.int64)
        ids = np.zeros(len(pos), np.int64)
        if op.fn == "get_rows":
            raise QdbgError(f"{op.name}: the embedding lookup reads token ids, not op inputs")
        if len(inputs) != len(op.inputs):
            raise QdbgError(f"{op.name}: {len(op.inputs)} inputs expected, got {len(inputs)}")
        return self._compute(op, [np.asarray(x) for x in inputs], PassContext(ids, pos, self, kv or self))

    def _compute(self, op: Op, x: list[np.ndarray], ctx: "PassContext") -> np.ndarray:
        cfg, nx, fn = self.cfg, self.numerics, op.fn
        n_tok = len(ctx.pos)
        if op.heads is not None:  # [n_tok, n_head*hd] -> [n_tok, n_head, hd]
            x[0] = x[0].reshape(n_tok, cfg.n_head if op.heads == "Q" else cfg.n_head_kv, cfg.head_dim)
        if fn == "get_rows":
            return nx.get_rows(self.weight(op.weight), ctx.ids)
        if fn == "scale":
            return nx.scale(x[0], cfg.embd_scale)
        if fn == "norm":
            return nx.rms_norm(x[0], self.weight(op.weight).values, cfg.rms_eps)
        if fn in ("matmul", "logits"):
            y = nx.matmul(x[0], self.weight(op.weight))
            if op.bias:
                y = nx.add(y, self.weight(op.bias).values)
            if fn == "logits" and cfg.final_logit_softcap:
                y = nx.softcap(y, cfg.final_logit_softcap)
            return y
        if fn == "rope":
            return nx.rope(x[0], ctx.rope_cache(op.layer), cfg.n_rot, cfg.rope_type == "neox")
        if fn == "add":
            return nx.add(x[0], x[1])
        if fn == "swiglu":
            return nx.swiglu(x[0], x[1])
        if fn == "geglu":
            return nx.geglu(x[0], x[1])
        il = op.layer
        assert il is not None
        if fn == "softmax":
            return nx.softmax(x[0], ctx.mask(il), cfg.softmax_scale)
        if fn == "kqv":
            return nx.attn_values(x[0], ctx.values(il, x[1]))
        q = x[0] if cfg.q_scale == 1.0 else nx.scale(x[0], cfg.q_scale)  # gemma3 scales Q first
        k_all = ctx.keys(il, x[1])
        if fn == "kq":
            return nx.attn_scores(q, k_all)
        if fn == "fattn":
            return nx.flash_attn(q, k_all, ctx.values(il, x[2]), ctx.mask(il), cfg.softmax_scale)
        raise QdbgError(f"{op.name}: unknown op function {fn!r}")

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


class PassContext:
    """What the ops of one pass share: token ids and positions, the RoPE tables and masks of each
    layer, and each layer's K and V as this pass reads them (the cache of earlier passes of `kv`,
    then this pass's rows as `engine`'s cache stores them)."""

    def __init__(self, ids: np.ndarray, pos: np.ndarray, engine: Engine, kv: Engine) -> None:
        self.ids, self.pos, self.engine, self.past = ids, pos, engine, kv
        self.kv: dict[int, list[np.ndarray]] = {}
        self._rope: dict[int, Any] = {}
        self._mask: dict[int, np.ndarray] = {}

    def rope_cache(self, il: int):
        if il not in self._rope:  # shared by Q and K of a layer
            cfg = self.engine.cfg
            self._rope[il] = self.engine.numerics.rope_cache(self.pos, cfg.n_rot, *cfg.rope_params(il))
        return self._rope[il]

    def mask(self, il: int) -> np.ndarray:
        if il not in self._mask:
            cfg = self.engine.cfg
            kv_pos = np.arange(0, int(self.pos[-1]) + 1, dtype=np.int64)
            self._mask[il] = ops.causal_mask(self.pos, kv_pos, cfg.n_swa if cfg.is_swa(il) else 0)
        return self._mask[il]

    def _append(self, il: int, which: int, new: np.ndarray) -> np.ndarray:
        cache = self.past.k_cache if which == 0 else self.past.v_cache
        rows = self.engine.numerics.kv_store(new)
        full = np.concatenate([cache[il], rows]) if il < len(cache) else rows
        self.kv.setdefault(il, [None, None])[which] = full  # type: ignore[list-item]
        return full

    def keys(self, il: int, k_new: np.ndarray) -> np.ndarray:
        """K of layer il as attention reads it: [n_kv, n_head_kv, hd]."""
        return self._append(il, 0, k_new)

    def values(self, il: int, v_new: np.ndarray) -> np.ndarray:
        """V of layer il: the new rows come flat from Vcur; [n_kv, n_head_kv, hd]."""
        cfg = self.engine.cfg
        return self._append(il, 1, v_new.reshape(len(self.pos), cfg.n_head_kv, cfg.head_dim))
