"""Session: the debugger over a live source — two (or three) engines stepped in lockstep over the
same tokens, in the spirit of bdb.

Sides are A and B (the two quantizations) and optionally R, a higher-precision reference. Every
op yields one Record with each side's value, stats and the pairwise metrics (A vs B, and A vs R,
B vs R when R is given). The pieces: qdbg.live.LiveSource computes ops (with weight patches and
activation resyncs), qdbg.debugger.Debugger walks them (cursor, history, verbs, breakpoints,
scope), qdbg.records types what they carry. A replay (qdbg.replay) is the same Debugger over a
recorded source. This module keeps the names the CLI, the TUI, scan and the tests use.
"""

from __future__ import annotations

from typing import Any, Sequence

from qdbg.debugger import PAIRS, Debugger, Stop
from qdbg.errors import ModelMismatchError, QdbgError, UsageError
from qdbg.live import LiveSource, Patch, Resync
from qdbg.numerics import DEFAULT_MODE, RunSettings
from qdbg.records import Record
from qdbg.scope import ALL as SCOPE_ALL, LAST as SCOPE_LAST, Scope, parse_scope
from qdbg.source import DRIVERS, numerics_label

__all__ = ["DRIVERS", "PAIRS", "SCOPE_ALL", "SCOPE_LAST", "Patch", "Record", "Resync", "Scope", "Session",
           "Stop", "check_match", "numerics_label", "open_session", "parse_scope"]


def check_match(models: dict[str, Any]) -> None:
    """Raise ModelMismatchError naming the first difference between the models' shapes/vocab."""
    labels = list(models)
    ref = models[labels[0]]
    for lab in labels[1:]:
        m = models[lab]
        a, b = ref.config, m.config
        for f in ("arch", "n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff",
                  "rope_type", "n_rot", "qkv_bias", "qk_norm", "post_norms", "ffn_act", "n_swa"):
            if getattr(a, f) != getattr(b, f):
                raise ModelMismatchError(
                    f"{ref.path.name} and {m.path.name} differ in {f}: {getattr(a, f)} vs {getattr(b, f)}")
        ta, tb = ref.tensors, m.tensors
        for name in sorted(set(ta) ^ set(tb)):
            where = ref.path.name if name in ta else m.path.name
            raise ModelMismatchError(f"tensor '{name}' is only in {where}")
        for name, t in ta.items():
            if tuple(t.shape) != tuple(tb[name].shape):
                raise ModelMismatchError(
                    f"tensor '{name}' has shape {list(t.shape)} in {ref.path.name} "
                    f"but {list(tb[name].shape)} in {m.path.name}")
        va = ref.metadata.get("tokenizer.ggml.tokens")
        vb = m.metadata.get("tokenizer.ggml.tokens")
        if (va is None) != (vb is None) or (va is not None and len(va) != len(vb)):
            raise ModelMismatchError(f"{ref.path.name} and {m.path.name} have different vocabularies")
        if va is not None:
            n = len(va)
            for i in sorted({0, 1, 2, n // 3, n // 2, n - 2, n - 1} & set(range(n))):
                if va[i] != vb[i]:
                    raise ModelMismatchError(
                        f"{ref.path.name} and {m.path.name} have different vocabularies "
                        f"(token {i}: {va[i]!r} vs {vb[i]!r})")



class Session(Debugger):
    """A Debugger over a LiveSource built from opened models; see the module docstring."""

    def __init__(
        self,
        models: dict[str, Any],
        tokens: Sequence[int],
        *,
        mode: str = DEFAULT_MODE,
        scope: str | int = SCOPE_LAST,
        top_k: int = 10,
        pieces: Any = None,
        settings: RunSettings | None = None,
        patches: Sequence[Patch | str] = (),
        resyncs: Sequence[Resync | str] = (),
        attribution: bool = True,
        noise: bool = False,
        keep_values: bool = True,
    ) -> None:
        scope = parse_scope(scope)
        src = LiveSource(models, tokens, mode=mode, settings=settings, pieces=pieces,
                         patches=[p if isinstance(p, Patch) else Patch.parse(p) for p in patches],
                         resyncs=[r if isinstance(r, Resync) else Resync(str(r)) for r in resyncs],
                         attribution=attribution, noise=noise)
        super().__init__(src, scope=scope, top_k=top_k, keep_values=keep_values)

    @property
    def engines(self) -> dict[str, Any]:
        return self.source.engines

    @property
    def settings(self) -> RunSettings:
        return self.source.settings


def open_session(paths: dict[str, str], tokens: Sequence[int] | None = None, *, prompt: str | None = None,
                 chat: bool = False, mode: str = DEFAULT_MODE, **kw: Any) -> Session:
    """Factory used by the CLI and tests: open models by path and build a Session."""
    from qdbg.model import Model

    models = {lab: Model(p) for lab, p in paths.items()}
    if tokens is None:
        if prompt is None:
            raise UsageError("give a prompt or tokens")
        tok = models["A"].tokenizer
        text = tok.render_chat([{"role": "user", "content": prompt}]) if chat else prompt
        tokens = tok.encode(text)
    try:
        pieces = models["A"].tokenizer.piece
    except QdbgError:
        pieces = None
    s = Session(models, tokens, mode=mode, pieces=pieces, **kw)
    s.prompt_text = prompt
    return s
