"""Reading the hyper-parameters every decoder-only architecture shares (llama.cpp's load_hparams)."""

from __future__ import annotations

from typing import Any, Mapping

from qdbg.arch.config import ModelConfig, md_float, md_int
from qdbg.errors import GGUFError


def base_fields(
    arch: str, md: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]], where: str
) -> dict[str, Any]:
    """Fields of ModelConfig common to all archs, validated against the tensor shapes."""
    k = f"{arch}."
    n_embd = md_int(md, k + "embedding_length", where=where)
    n_head = md_int(md, k + "attention.head_count", where=where)
    if n_embd == 0 or n_head == 0:
        raise GGUFError(f"{where}embedding_length and head_count must be positive")
    n_head_kv = md_int(md, k + "attention.head_count_kv", n_head, where=where) or n_head
    head_dim = md_int(md, k + "attention.key_length", n_embd // n_head, where=where)
    head_dim_v = md_int(md, k + "attention.value_length", head_dim, where=where)
    if head_dim != head_dim_v or head_dim == 0:
        raise GGUFError(f"{where}key_length {head_dim} != value_length {head_dim_v}")
    n_layer = md_int(md, k + "block_count", where=where)
    if n_layer == 0:
        raise GGUFError(f"{where}block_count is 0")
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise GGUFError(f"{where}missing tensor 'token_embd.weight'")
    if len(emb) != 2 or emb[1] != n_embd:
        raise GGUFError(f"{where}token_embd.weight has shape {emb}, expected [n_vocab, {n_embd}]")
    n_rot = md_int(md, k + "rope.dimension_count", head_dim, where=where)
    if n_rot > head_dim or n_rot % 2:
        raise GGUFError(f"{where}rope.dimension_count {n_rot} does not fit head_dim {head_dim}")
    scaling = md.get(k + "rope.scaling.type", "none")
    factor = md_float(md, k + "rope.scaling.factor", 0.0, where=where)
    freq_scale = 1.0
    if scaling == "linear" and factor > 0:
        freq_scale = 1.0 / factor
    elif scaling not in ("none", "linear", None):
        from qdbg.errors import UnsupportedError

        raise UnsupportedError(f"{where}rope scaling '{scaling}' is not supported")
    return dict(
        arch=arch,
        n_vocab=int(emb[0]),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=md_int(md, k + "feed_forward_length", where=where),
        n_ctx_train=md_int(md, k + "context_length", 4096, where=where),
        rms_eps=md_float(md, k + "attention.layer_norm_rms_epsilon", where=where),
        n_rot=n_rot,
        rope_base=md_float(md, k + "rope.freq_base", 10000.0, where=where),
        rope_freq_scale=freq_scale,
        tied_embeddings="output.weight" not in tensors,
    )


def check_tensors(cfg: ModelConfig, tensors: Mapping[str, tuple[int, ...]], where: str) -> ModelConfig:
    """Fail early, naming the tensor, if a block weight is missing or has the wrong shape."""
    e, hd = cfg.n_embd, cfg.head_dim
    want: dict[str, tuple[int, ...]] = {"output_norm.weight": (e,)}
    if not cfg.tied_embeddings:
        want["output.weight"] = (cfg.n_vocab, e)
    for il in range(cfg.n_layer):
        b = f"blk.{il}."
        want.update({
            b + "attn_norm.weight": (e,),
            b + "attn_q.weight": (cfg.n_head * hd, e),
            b + "attn_k.weight": (cfg.n_head_kv * hd, e),
            b + "attn_v.weight": (cfg.n_head_kv * hd, e),
            b + "attn_output.weight": (e, cfg.n_head * hd),
            b + "ffn_norm.weight": (e,),
            b + "ffn_gate.weight": (cfg.n_ff, e),
            b + "ffn_up.weight": (cfg.n_ff, e),
            b + "ffn_down.weight": (e, cfg.n_ff),
        })
        if cfg.qkv_bias:
            want[b + "attn_q.bias"] = (cfg.n_head * hd,)
            want[b + "attn_k.bias"] = (cfg.n_head_kv * hd,)
            want[b + "attn_v.bias"] = (cfg.n_head_kv * hd,)
        if cfg.qk_norm:
            want[b + "attn_q_norm.weight"] = (hd,)
            want[b + "attn_k_norm.weight"] = (hd,)
        if cfg.post_norms:
            want[b + "post_attention_norm.weight"] = (e,)
            want[b + "post_ffw_norm.weight"] = (e,)
    for name, shape in want.items():
        got = tensors.get(name)
        if got is None:
            raise GGUFError(f"{where}missing tensor '{name}'")
        if tuple(got) != shape:
            raise GGUFError(f"{where}tensor '{name}' has shape {list(got)}, expected {list(shape)}")
    return cfg
