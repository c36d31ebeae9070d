"""The op list of one forward pass: what the engine computes, in llama.cpp's graph order.

One declarative list serves everything that needs to know a pass before computing it: the engine
walks it (qdbg.engine.forward), the debugger checks breakpoint and go-to targets against it
(qdbg.catalogue), and attribution re-runs single ops from it. The list follows llama.cpp's graphs
(src/models/llama.cpp, qwen2.cpp, qwen3.cpp, gemma3.cpp; build_norm / build_ffn / build_attn_mha
in llama-graph.cpp) and uses its callback names; an architecture's differences are the config
flags its module declares (qkv_bias, qk_norm, post_norms, GEGLU, embedding scale, windows) and the
graph names it gives (`GRAPH_NAMES`: only llama names the attention output `attn_out`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TOK_CH = ("token", "channel")
TOK_HEAD = ("token", "head", "dim")
SCORES = ("head", "token", "kv")
TOK_VOCAB = ("token", "vocab")


@dataclass(frozen=True)
class Op:
    """One sub-op of a pass.

    `fn` names the computation (Engine.compute dispatches on it); `inputs` are the names of the ops
    it reads, in order; `heads` ("Q"/"K") says the input is reshaped to [n_tok, n_head, head_dim]
    first; `bias` is an added bias vector (qwen2's Q/K/V). `ggml_name`/`ggml_op` name the node of
    llama.cpp's graph that holds the same tensor (None: unnamed there, or no such node).
    """

    name: str
    kind: str          # embed scale norm matmul rope scores softmax attn residual act logits
    layer: int | None
    fn: str            # get_rows scale norm matmul rope kq softmax kqv fattn add swiglu geglu logits
    inputs: tuple[str, ...] = ()
    weight: str | None = None
    axes: tuple[str, ...] = TOK_CH
    ggml_name: str | None = None
    ggml_op: str | None = None
    bias: str | None = None
    heads: str | None = None


def pass_ops(cfg: Any, flash_attn: bool = False) -> list[Op]:
    """Every op of one pass for a model config, in the order the engine computes them."""
    from qdbg.arch import graph_names

    names = graph_names(cfg.arch)
    ops = [Op("inp_embd", "embed", None, "get_rows", (), "token_embd.weight",
              ggml_name="embd", ggml_op="GET_ROWS")]
    cur = "inp_embd"
    if cfg.embd_scale:
        ops.append(Op("inp_scaled", "scale", None, "scale", (cur,), ggml_name="inp_scaled", ggml_op="SCALE"))
        cur = "inp_scaled"
    for il in range(cfg.n_layer):
        b = f"blk.{il}."

        def L(s: str) -> str:  # llama.cpp's "name-layer"
            return f"{s}-{il}"

        def norm(name: str, src: str, weight: str, heads: str | None = None) -> Op:
            """build_norm: RMS norm times the weight, llama.cpp's MUL node."""
            return Op(L(name), "norm", il, "norm", (src,), b + weight, TOK_HEAD if heads else TOK_CH,
                      L(name), "MUL", heads=heads)

        inp = cur
        ops.append(norm("attn_norm", inp, "attn_norm.weight"))
        for p in ("q", "k", "v"):
            nm = L(f"{p.upper()}cur")
            bias = b + f"attn_{p}.bias" if cfg.qkv_bias else None
            ops.append(Op(nm, "matmul", il, "matmul", (L("attn_norm"),), b + f"attn_{p}.weight",
                          ggml_name=nm, ggml_op="ADD" if bias else "MUL_MAT", bias=bias))
        roped = {}
        for p in ("Q", "K"):
            src = L(f"{p}cur")
            if cfg.qk_norm:
                ops.append(norm(f"{p}cur_normed", src, f"attn_{p.lower()}_norm.weight", heads=p))
                src = L(f"{p}cur_normed")
            ops.append(Op(L(f"{p}cur_rope"), "rope", il, "rope", (src,), axes=TOK_HEAD,
                          ggml_name=L(f"{p}cur"), ggml_op="ROPE", heads=p))
            roped[p] = L(f"{p}cur_rope")
        if flash_attn:
            ops.append(Op(L("kqv_out"), "attn", il, "fattn", (roped["Q"], roped["K"], L("Vcur")),
                          ggml_op="FLASH_ATTN_EXT"))
        else:
            ops.append(Op(L("kq"), "scores", il, "kq", (roped["Q"], roped["K"]), axes=SCORES,
                          ggml_name=L("kq"), ggml_op="MUL_MAT"))
            ops.append(Op(L("kq_soft_max"), "softmax", il, "softmax", (L("kq"),), axes=SCORES,
                          ggml_name=L("kq_soft_max"), ggml_op="SOFT_MAX"))
            ops.append(Op(L("kqv_out"), "attn", il, "kqv", (L("kq_soft_max"), L("Vcur")),
                          ggml_name=L("kqv_out"), ggml_op="CONT"))
        ops.append(Op(L("attn_out"), "matmul", il, "matmul", (L("kqv_out"),), b + "attn_output.weight",
                      ggml_name=L(names["attn_out"]) if "attn_out" in names else None, ggml_op="MUL_MAT"))
        att = L("attn_out")
        if cfg.post_norms:
            ops.append(norm("attn_post_norm", att, "post_attention_norm.weight"))
            att = L("attn_post_norm")
        res = L("sa_out") if cfg.post_norms else L("ffn_inp")
        ops.append(Op(res, "residual", il, "add", (att, inp), ggml_name=res, ggml_op="ADD"))
        ops.append(norm("ffn_norm", res, "ffn_norm.weight"))
        for p in ("gate", "up"):  # graph order: swiglu(gate, up) visits gate first
            ops.append(Op(L(f"ffn_{p}"), "matmul", il, "matmul", (L("ffn_norm"),), b + f"ffn_{p}.weight",
                          ggml_name=L(f"ffn_{p}"), ggml_op="MUL_MAT"))
        act = "geglu" if cfg.ffn_act == "gelu" else "swiglu"
        ops.append(Op(L(f"ffn_{act}"), "act", il, act, (L("ffn_gate"), L("ffn_up")),
                      ggml_name=L(f"ffn_{act}"), ggml_op="GLU"))
        ops.append(Op(L("ffn_out"), "matmul", il, "matmul", (L(f"ffn_{act}"),), b + "ffn_down.weight",
                      ggml_name=L("ffn_out"), ggml_op="MUL_MAT"))
        ffo = L("ffn_out")
        if cfg.post_norms:
            ops.append(norm("ffn_post_norm", ffo, "post_ffw_norm.weight"))
            ffo = L("ffn_post_norm")
        ops.append(Op(L("l_out"), "residual", il, "add", (ffo, res), ggml_name=L("l_out"), ggml_op="ADD"))
        cur = L("l_out")
    ops.append(Op("result_norm", "norm", None, "norm", (cur,), "output_norm.weight",
                  ggml_name="result_norm", ggml_op="MUL"))
    ops.append(Op("result_output", "logits", None, "logits", ("result_norm",),
                  "token_embd.weight" if cfg.tied_embeddings else "output.weight", TOK_VOCAB,
                  "result_output", "MUL_MAT"))
    return ops


def last_reads(ops: list[Op]) -> dict[int, list[str]]:
    """{op index: names no op after it reads} — what a walker may free once that op is done."""
    last: dict[str, int] = {}
    for i, op in enumerate(ops):
        for name in op.inputs:
            last[name] = i
    out: dict[int, list[str]] = {}
    for name, i in last.items():
        out.setdefault(i, []).append(name)
    return out
