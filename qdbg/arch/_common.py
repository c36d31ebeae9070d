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


def tensor_table(*, n_vocab: int, n_embd: int, n_layer: int, n_head: int, n_head_kv: int,
                 head_dim: int, n_ff: int, qkv_bias: bool = False, qk_norm: bool = False,
                 post_norms: bool = False, tied: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of a decoder of this shape, {GGUF name: numpy shape}, in llama.cpp's file order.

    The one tensor table: the shape checks of every architecture and qdbg.synth's files use it.
    Matrices are (rows, row length), i.e. [n_out, n_in].
    """
    e, hd, ff = n_embd, head_dim, n_ff
    q, kv = n_head * hd, n_head_kv * hd
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, e)}
    for il in range(n_layer):
        b = f"blk.{il}."
        shapes[b + "attn_norm.weight"] = (e,)
        for t, rows in (("q", q), ("k", kv), ("v", kv)):
            shapes[b + f"attn_{t}.weight"] = (rows, e)
            if qkv_bias:
                shapes[b + f"attn_{t}.bias"] = (rows,)
        if qk_norm:
            shapes[b + "attn_q_norm.weight"] = (hd,)
            shapes[b + "attn_k_norm.weight"] = (hd,)
        shapes[b + "attn_output.weight"] = (e, q)
        if post_norms:
            shapes[b + "post_attention_norm.weight"] = (e,)
        shapes[b + "ffn_norm.weight"] = (e,)
        shapes[b + "ffn_gate.weight"] = (ff, e)
        shapes[b + "ffn_up.weight"] = (ff, e)
        shapes[b + "ffn_down.weight"] = (e, ff)
        if post_norms:
            shapes[b + "post_ffw_norm.weight"] = (e,)
    shapes["output_norm.weight"] = (e,)
    if not tied:
        shapes["output.weight"] = (n_vocab, e)
    return shapes


def check_tensors(cfg: ModelConfig, tensors: Mapping[str, tuple[int, ...]], where: str) -> ModelConfig:
    """Fail early, naming the tensor, if a block weight is missing or has the wrong shape."""
    want = tensor_table(n_vocab=cfg.n_vocab, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
                        n_head_kv=cfg.n_head_kv, head_dim=cfg.head_dim, n_ff=cfg.n_ff,
                        qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, post_norms=cfg.post_norms,
                        tied=cfg.tied_embeddings)
    del want["token_embd.weight"]  # base_fields checked it (and took n_vocab from it)
    for name, shape in want.items():
        got = tensors.get(name)
        if got is None:
            raise GGUFError(f"{where}missing tensor '{name}'")
        if tuple(got) != shape:
            raise GGUFError(f"{where}tensor '{name}' has shape {list(got)}, expected {list(shape)}")
    return cfg
