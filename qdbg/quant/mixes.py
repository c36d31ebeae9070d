"""llama.cpp's per-tensor quantization type choice ("mixes" such as Q4_K_M), ported to Python.

A port of `llama_tensor_get_type` and its helpers from llama.cpp's src/llama-quant.cpp, limited
to the file types qdbg can produce and to quantization WITHOUT an importance matrix:

- `FTYPES` maps our ftype names to llama.cpp's `llama_ftype` number, default tensor type and the
  `--pure` flag. Plain type names ("Q4_0", "Q4_K", ...) are pure: every quantizable 2D weight gets
  that type. "Q4_K_M", "Q5_K_M", "Q4_K_S", "Q5_K_S" follow llama.cpp's mix rules.
- `tensor_type()` decides one tensor; `tensor_types()` decides a whole model, walking tensors in
  llama.cpp's order (its per-category counters, e.g. for attn_v, count in that order).
- Both take llama-quantize's `--tensor-type` overrides (qdbg.quant.overrides): the first matching
  pattern decides a quantizable tensor's type, skipping the mix rules and their counters.

Layer counters: llama.cpp counts attn_v / ffn_down tensors as it meets them, in the loader's order
(tensors outside blocks first, then by block number). For a dense model with one such tensor per
block the counter equals the block number, which is what `tensor_type()` uses when not told.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from qdbg.errors import UnsupportedError
from qdbg.quant.overrides import TensorTypeOverride, match_override

__all__ = [
    "FTYPES", "LLAMA_MIXES", "PURE_EXTRA", "FtypeInfo", "SUPPORTED_QTYPES", "ftype_info", "tensor_allows_quantization",
    "tensor_type", "tensor_types", "llama_tensor_order",
]

# Tensor types qdbg can write (quantizers in qdbg.quant, plus plain floats).
SUPPORTED_QTYPES = frozenset({
    Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K,
    Q.BF16, Q.Q2_K, Q.Q3_K,
})


@dataclass(frozen=True)
class FtypeInfo:
    """One file type: llama.cpp's `llama_ftype` number, default tensor type, `--pure` or mix."""

    name: str
    llama_ftype: int  # value written to general.file_type
    default: Q
    pure: bool


def _fi(name: str, llama_ftype: int, default: Q, pure: bool) -> tuple[str, FtypeInfo]:
    return name, FtypeInfo(name, llama_ftype, default, pure)


# llama_ftype numbers: LLAMA_FTYPE_ALL_F32 = 0, MOSTLY_F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 7,
# Q5_0 = 8, Q5_1 = 9, Q4_K_S = 14, Q4_K_M = 15, Q5_K_S = 16, Q5_K_M = 17, Q6_K = 18.
# Pure K types reuse the _S ftype (its default type is the K type; pure drops the mix rules).
FTYPES: dict[str, FtypeInfo] = dict([
    _fi("F32", 0, Q.F32, True),
    _fi("F16", 1, Q.F16, True),
    _fi("Q8_0", 7, Q.Q8_0, True),
    _fi("Q6_K", 18, Q.Q6_K, True),
    _fi("Q5_K", 16, Q.Q5_K, True),
    _fi("Q4_K", 14, Q.Q4_K, True),
    _fi("Q5_1", 9, Q.Q5_1, True),
    _fi("Q5_0", 8, Q.Q5_0, True),
    _fi("Q4_1", 3, Q.Q4_1, True),
    _fi("Q4_0", 2, Q.Q4_0, True),
    _fi("Q4_K_M", 15, Q.Q4_K, False),
    _fi("Q5_K_M", 17, Q.Q5_K, False),
    _fi("Q4_K_S", 14, Q.Q4_K, False),
    _fi("Q5_K_S", 16, Q.Q5_K, False),
])

# llama.cpp's own (non-pure) legacy mixes, for checking the rules; not offered as file types.
LLAMA_MIXES: dict[str, FtypeInfo] = dict([
    _fi("MOSTLY_Q8_0", 7, Q.Q8_0, False),
    _fi("MOSTLY_Q6_K", 18, Q.Q6_K, False),
    _fi("MOSTLY_Q5_1", 9, Q.Q5_1, False),
    _fi("MOSTLY_Q5_0", 8, Q.Q5_0, False),
    _fi("MOSTLY_Q4_1", 3, Q.Q4_1, False),
    _fi("MOSTLY_Q4_0", 2, Q.Q4_0, False),
])

# More pure file types (llama.cpp's quantize with params.pure): used by the exact-mode goldens
# (tools/record_exact_golden.py); kept apart from FTYPES, the list the synth goldens cover.
# llama_ftype: MOSTLY_Q2_K = 10, Q3_K_S = 11 (default type Q3_K), MOSTLY_BF16 = 32.
PURE_EXTRA: dict[str, FtypeInfo] = dict([
    _fi("BF16", 32, Q.BF16, True),
    _fi("Q3_K", 11, Q.Q3_K, True),
    _fi("Q2_K", 10, Q.Q2_K, True),
])

# Substrings that keep a 2D ".weight" tensor unquantized (tensor_allows_quantization).
_NO_QUANT_SUBSTR = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd",
    "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook",
    "mm.a.code_embd",
)
_NO_QUANT_EXACT = ("position_embd.weight", "token_types.weight")

_BLK = re.compile(r"^blk\.(\d+)\.")


def ftype_info(ftype: str) -> FtypeInfo:
    """Look up an ftype name (see `FTYPES`, or a `LLAMA_MIXES` name); UnsupportedError if unknown."""
    info = FTYPES.get(ftype) or LLAMA_MIXES.get(ftype) or PURE_EXTRA.get(ftype)
    if info is None:
        raise UnsupportedError(f"unsupported ftype {ftype!r}; expected one of {', '.join(FTYPES)}")
    return info


def _block_size(qtype: Q) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def _category(name: str) -> str:
    # order matters: mirrors llama.cpp's tensor_get_category
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _layer_of(name: str) -> int | None:
    m = _BLK.match(name)
    return int(m.group(1)) if m else None


def tensor_allows_quantization(name: str, shape: Sequence[int]) -> bool:
    """True if llama.cpp would quantize this tensor at all (2D/3D weights, not norms, ...)."""
    if len(shape) < 2 or all(int(d) == 1 for d in shape[:-1]):
        return False  # ggml_n_dims < 2
    if not name.endswith("weight"):
        return False
    if any(s in name for s in _NO_QUANT_SUBSTR) or name in _NO_QUANT_EXACT:
        return False
    return True


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2



def _mix_rule(cat: str, ncols: int, info: FtypeInfo, *, i_layer: int, n_layer: int,
              i_attention_wv: int, n_attention_wv: int, n_expert: int, has_output: bool,
              is_70b: bool, falcon: bool) -> Q:
    """llama_tensor_get_type_impl for our ftypes: no imatrix, no user type overrides."""
    ft, new = info.name, info.default
    if cat == "output" or (not has_output and cat == "token_embd"):
        # tied embeddings: token_embd is quantized like the output tensor
        if falcon or ncols % _block_size(new) != 0:
            return Q.Q8_0
        return new if new == Q.Q8_0 else Q.Q6_K
    if cat == "token_embd":
        return new
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        if ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_attention_wv, n_attention_wv):
            new = Q.Q6_K
        elif ft == "Q4_K_S" and i_attention_wv < 4:
            new = Q.Q5_K
        if is_70b and new in (Q.Q3_K, Q.Q4_K):
            new = Q.Q5_K  # 8 heads share attn_v in the 70B model
        return Q.Q8_0 if n_expert == 8 else new
    if cat == "attn_k":
        return Q.Q8_0 if n_expert == 8 else new
    if cat == "ffn_down":
        if ft == "Q4_K_M":
            if falcon:
                return (Q.Q6_K if i_layer < n_layer // 16
                        else Q.Q5_K if _use_more_bits(i_layer, n_layer) else Q.Q4_K)
            return Q.Q6_K if _use_more_bits(i_layer, n_layer) else new
        if ft == "Q5_K_M" and _use_more_bits(i_layer, n_layer):
            return Q.Q6_K
        if ft == "Q4_K_S" and not falcon and i_layer < n_layer // 8:
            return Q.Q5_K
        return new  # (Q4_0/Q5_0 -> Q4_1/Q5_1 on early layers only happens with an imatrix)
    if cat == "attn_output":
        if not falcon and n_expert == 8 and ft in ("Q4_K_S", "Q4_K_M"):
            return Q.Q5_K
        return new
    # attn_qkv is caught by the attn_v branch (llama.cpp's own attn_qkv branch is unreachable)
    return new


# Fallback when a row length is not a multiple of the target's block size.
_FALLBACK = {
    Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.TQ1_0: Q.Q4_0, Q.TQ2_0: Q.Q4_0,
    Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0,
    Q.IQ1_S: Q.IQ4_NL, Q.IQ1_M: Q.IQ4_NL, Q.IQ2_XXS: Q.IQ4_NL, Q.IQ2_XS: Q.IQ4_NL,
    Q.IQ2_S: Q.IQ4_NL, Q.IQ3_XXS: Q.IQ4_NL, Q.IQ3_S: Q.IQ4_NL, Q.IQ4_XS: Q.IQ4_NL,
    # Block-32 types: the llama.cpp source read (tensor_type_fallback) throws "no tensor type
    # fallback is defined" for these, but the llama.cpp built into llama-cpp-python 0.3.36 gives
    # F16 ("must use F16 due to unusual shape"), verified with a row length of 656. We follow
    # the measured behaviour.
    Q.Q4_0: Q.F16, Q.Q4_1: Q.F16, Q.Q5_0: Q.F16, Q.Q5_1: Q.F16, Q.Q8_0: Q.F16, Q.IQ4_NL: Q.F16,
}


def _fallback(name: str, ncols: int, qtype: Q) -> Q:
    if ncols % _block_size(qtype) == 0:
        return qtype
    alt = _FALLBACK.get(qtype)
    if alt is None:
        raise UnsupportedError(
            f"tensor {name!r}: row length {ncols} is not a multiple of {_block_size(qtype)} "
            f"(required for {qtype.name}) and llama.cpp defines no fallback for {qtype.name}")
    return alt if ncols % _block_size(alt) == 0 else Q.F16


def tensor_type(name: str, shape: Sequence[int], ftype: str, n_layer: int, *,
                n_head: int = 1, n_head_kv: int = 1, n_expert: int = 0, has_output: bool = True,
                arch: str = "llama", i_attention_wv: int | None = None,
                n_attention_wv: int | None = None, i_ffn_down: int | None = None,
                overrides: Sequence[TensorTypeOverride] = ()) -> Q:
    """Type llama.cpp's quantizer gives tensor `name` (numpy `shape`, row length = shape[-1]).

    `ftype` is a name from `FTYPES`; `n_layer` the block count; `has_output` False when the model
    has no output.weight (tied embeddings: token_embd then gets the output tensor's rule).
    `i_attention_wv` / `i_ffn_down` / `n_attention_wv` are llama.cpp's running counters; they
    default to the block number in `name` and to `n_layer` (exact for dense models).
    `overrides` are llama-quantize's `--tensor-type` rules: the first whose pattern is found in
    `name` gives the type (only for quantizable tensors of a quantized file type), then the
    row-length fallback applies as usual.
    Raises UnsupportedError when the result is a type qdbg cannot write.
    """
    info = ftype_info(ftype)
    if info.default == Q.F32 or not tensor_allows_quantization(name, shape):
        return Q.F32
    ncols = int(shape[-1])
    new = info.default
    if new not in (Q.F16, Q.BF16, Q.F32):  # ggml_is_quantized(default_type)
        manual = match_override(name, overrides)
        if manual is not None:
            new = manual
        elif not info.pure:
            cat = _category(name)
            layer = _layer_of(name)
            need_layer = ((cat == "ffn_down" and (i_ffn_down is None or n_expert > 1))
                          or (cat in ("attn_v", "attn_qkv", "attn_kv_b") and i_attention_wv is None))
            if need_layer and layer is None:
                raise UnsupportedError(f"tensor {name!r}: cannot tell its block number (expected 'blk.N.')")
            layer = layer or 0
            new = _mix_rule(
                cat, ncols, info,
                i_layer=layer if (i_ffn_down is None or n_expert > 1) else i_ffn_down,
                n_layer=n_layer,
                i_attention_wv=layer if i_attention_wv is None else i_attention_wv,
                n_attention_wv=n_layer if n_attention_wv is None else n_attention_wv,
                n_expert=n_expert, has_output=has_output,
                is_70b=arch == "llama" and n_layer == 80 and n_head != n_head_kv,
                falcon=arch == "falcon")
        new = _fallback(name, ncols, new)
    if new not in SUPPORTED_QTYPES:
        raise UnsupportedError(f"tensor {name!r}: llama.cpp would use {new.name}, which qdbg cannot write")
    return new


def llama_tensor_order(names: Sequence[str]) -> list[str]:
    """Names in llama.cpp's loader order: tensors outside blocks first, then by block number, then by name."""
    def key(n: str) -> tuple[int, str]:
        layer = _layer_of(n)
        return (-1 if layer is None else layer, n)
    return sorted(names, key=key)


def tensor_types(tensors: Mapping[str, Sequence[int]], ftype: str, n_layer: int, *,
                 n_head: int = 1, n_head_kv: int = 1, n_expert: int = 0,
                 arch: str = "llama", overrides: Sequence[TensorTypeOverride] = ()) -> dict[str, Q]:
    """Types for a whole model {name: numpy shape}, counting attn_v/ffn_down like llama.cpp does.

    has_output is taken from the presence of "output.weight"; the attn_v counter runs over
    attn_v/attn_qkv/attn_kv_b tensors in `llama_tensor_order`, the ffn_down counter over ffn_down.
    A tensor an override decides is not counted (llama.cpp counts inside its mix rules, which an
    overridden tensor skips), so the tensors after it may get other types than without it.
    """
    names = llama_tensor_order(list(tensors))
    has_output = "output.weight" in tensors
    n_wv = sum(_category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in names)
    i_wv = i_down = 0
    out: dict[str, Q] = {}
    for n in names:
        shape = tensors[n]
        out[n] = tensor_type(n, shape, ftype, n_layer, n_head=n_head, n_head_kv=n_head_kv,
                             n_expert=n_expert, has_output=has_output, arch=arch,
                             i_attention_wv=i_wv, n_attention_wv=n_wv, i_ffn_down=i_down,
                             overrides=overrides)
        if tensor_allows_quantization(n, shape) and match_override(n, overrides) is None:
            cat = _category(n)
            i_wv += cat in ("attn_v", "attn_qkv", "attn_kv_b")
            i_down += cat == "ffn_down"
    return {n: out[n] for n in tensors}
