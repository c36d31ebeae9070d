"""Synthetic GGUF models: one set of seeded random F32 weights written as a family of quantizations.

Used to test qdbg against llama.cpp without shipping real models. A `SynthSpec` fixes the
architecture (llama, qwen2, qwen3, gemma3), the dimensions and the seed; every tensor's weights
come from its own generator seeded with (seed, crc32(name)), so they do not depend on which other
tensors exist or on the order of generation. `write_gguf` writes one file type (see
`qdbg.quant.mixes.FTYPES`): per-tensor types follow llama.cpp's quantizer (`--pure` for plain type
names, llama.cpp's mix rules for Q4_K_M etc.), tensor data is produced by `qdbg.quant.quantize`.
The tokenizer is a small SentencePiece-style ("llama") vocab in which English text tokenizes into
word pieces rather than bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import string
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFWriter, TokenType

from qdbg.util import write_gguf_atomic
from qdbg.errors import QdbgError, UnsupportedError
from qdbg.quant.mixes import ftype_info, tensor_types
from qdbg.progress import Progress, report

__all__ = [
    "ARCHS", "SynthSpec", "tensor_shapes", "synth_weight", "synth_weights", "synth_vocab",
    "quantize_rows", "plan_types", "SynthCache", "write_gguf", "write_family", "CHAT_TEMPLATE",
]

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
GEMMA3_SWA_PATTERN = 6  # llama.cpp: every 6th layer (il % 6 == 5) uses global attention
QUANT_VERSION = 2  # GGML_QNT_VERSION

# arch -> (n_layer, rms_eps, rope_base, tie_embeddings)
_ARCH_DEFAULTS = {
    "llama": (2, 1e-5, 10000.0, False),
    "qwen2": (2, 1e-6, 1000000.0, True),
    "qwen3": (2, 1e-6, 1000000.0, True),
    "gemma3": (GEMMA3_SWA_PATTERN, 1e-6, 1000000.0, True),
}

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """Shape and seed of a synthetic model. Fields left None take the arch's default.

    Defaults keep every row length a multiple of 256 so K-quants apply; gemma3 defaults to 6
    layers so that layer 5 is a global (non-sliding) layer. `rope_base_swa` is fixed at 10000
    by llama.cpp for gemma3 and is recorded here, not written to the file.
    """

    arch: str = "llama"
    n_vocab: int = 512
    n_embd: int = 256
    n_layer: int | None = None
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    n_ctx: int = 512
    rms_eps: float | None = None
    rope_base: float | None = None
    sliding_window: int | None = None  # gemma3 only (default 128)
    rope_base_swa: float | None = None  # gemma3 only (always 10000)
    tie_embeddings: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in _ARCH_DEFAULTS:
            raise UnsupportedError(f"synthetic arch {self.arch!r} not supported; expected one of {ARCHS}")
        n_layer, eps, base, tie = _ARCH_DEFAULTS[self.arch]
        fill = {"n_layer": n_layer, "rms_eps": eps, "rope_base": base, "tie_embeddings": tie}
        if self.arch == "gemma3":
            fill.update(sliding_window=128, rope_base_swa=10000.0)
        for key, val in fill.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, val)
        for key in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "n_ctx"):
            val = getattr(self, key)
            if not isinstance(val, int) or val <= 0:
                raise QdbgError(f"SynthSpec.{key} must be a positive int, got {val!r}")
        if self.n_head % self.n_head_kv:
            raise QdbgError(f"SynthSpec: n_head {self.n_head} is not a multiple of n_head_kv {self.n_head_kv}")
        if self.n_vocab < _MIN_VOCAB:
            raise QdbgError(f"SynthSpec.n_vocab must be >= {_MIN_VOCAB}, got {self.n_vocab}")
        if self.arch == "gemma3":
            if self.rope_base_swa != 10000.0:
                raise UnsupportedError(
                    f"gemma3 rope_base_swa is fixed at 10000 by llama.cpp, got {self.rope_base_swa}")
            if not self.sliding_window or self.sliding_window <= 0:
                raise QdbgError(f"gemma3 needs a positive sliding_window, got {self.sliding_window!r}")
        elif self.sliding_window is not None or self.rope_base_swa is not None:
            raise QdbgError(f"sliding_window / rope_base_swa apply to gemma3 only, not {self.arch}")

    def to_dict(self) -> dict:
        """Plain dict (all fields resolved), e.g. for JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> SynthSpec:
        """Inverse of `to_dict`; unknown keys raise QdbgError."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names
        if extra:
            raise QdbgError(f"unknown SynthSpec fields: {sorted(extra)}")
        return cls(**dict(d))


# ---------------------------------------------------------------------------------------------
# tensors and weights

def tensor_shapes(spec: SynthSpec) -> dict[str, tuple[int, ...]]:
    """{GGUF tensor name: numpy shape} in file order; shape is (rows, row length) for matrices."""
    from qdbg.arch import features
    from qdbg.arch._common import tensor_table

    return tensor_table(n_vocab=spec.n_vocab, n_embd=spec.n_embd, n_layer=int(spec.n_layer),  # type: ignore[arg-type]
                        n_head=spec.n_head, n_head_kv=spec.n_head_kv, head_dim=spec.head_dim,
                        n_ff=spec.n_ff, tied=bool(spec.tie_embeddings), **features(spec.arch))


def synth_weight(spec: SynthSpec, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic F32 weights of one tensor, from its own generator (seed, crc32(name)).

    Matrices: N(0, 1/fan_in) with per-row scales (log-normal; not for the vocab matrices), a few
    outlier input columns (x4..x8) and sparse spikes (x10), so quantization error varies across
    blocks. Norm weights: 1 +- 0.1 with two larger channels (x3; GGUF gemma norms already include
    the +1), gemma3's post-attention/post-FFN norms x3 more. Biases: N(0, 0.05).
    """
    rng = np.random.default_rng([spec.seed, zlib.crc32(name.encode())])
    if len(shape) == 1:
        (n,) = shape
        if name.endswith(".bias"):
            return (0.05 * rng.standard_normal(n)).astype(np.float32)
        w = 1.0 + 0.1 * rng.standard_normal(n)
        if ".post_" in name:  # gemma3 post-norms: louder branches, else the x sqrt(n_embd) embedding
            w *= 3.0          # dominates and the model just repeats its input token
        w[rng.choice(n, size=min(2, n), replace=False)] *= 3.0
        return w.astype(np.float32)
    rows, cols = shape
    w = rng.standard_normal((rows, cols)) / np.sqrt(cols)  # [rows, cols]
    if name not in ("token_embd.weight", "output.weight"):  # (loud vocab rows would win every argmax)
        w *= np.exp(0.25 * rng.standard_normal(rows))[:, None]  # per-row scale
    k = max(1, cols // 128)
    w[:, rng.choice(cols, size=k, replace=False)] *= rng.uniform(4.0, 8.0, size=k)  # outlier columns
    spikes = rng.choice(w.size, size=max(1, w.size // 4096), replace=False)
    w.flat[spikes] *= 10.0
    return w.astype(np.float32)


def synth_weights(spec: SynthSpec) -> dict[str, np.ndarray]:
    """All tensors of `spec` as F32 arrays, keyed like `tensor_shapes`."""
    return {n: synth_weight(spec, n, s) for n, s in tensor_shapes(spec).items()}


# ---------------------------------------------------------------------------------------------
# tokenizer

# Common English words, most frequent first (a Zipf weight 1/(rank+8) stands in for counts).
_WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this "
    "from or had by not word but what some we can out other were all there when up use your how "
    "said an each she which do their time if will way about many then them write would like so "
    "these her long make thing see him two has look more day could go come did number sound no "
    "most people my over know water than call first who may down side been now find any new work "
    "part take get place made live where after back little only round man year came show every "
    "good me give our under name very through just form sentence great think say help low line "
    "The It In This A He She We They What When How There And But If You I'm it's don't "
    "turn cause much mean before move right boy old too same tell does set three want air well "
    "also play small end put home read hand large add even land here must big high such follow "
    "why ask men change went light kind off need house try us again animal point mother world "
    "near build self earth father head stand own page should country found answer school grow "
    "study still learn plant cover food sun four between state keep eye never last let thought "
    "city tree cross farm hard start might story saw far sea draw left late run while press close "
    "night real life few north things looked going working called used asked making started "
    "words times years days people's cat dog sat mat cold warm question questions information"
).split()
_CHARS = ["\u2581", *string.ascii_lowercase, *string.ascii_uppercase, *string.digits, *string.punctuation]
_MIN_VOCAB = 3 + 256 + len(_CHARS)


def _merge_pair(seq: list[str], a: str, b: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def _bpe_pieces(budget: int) -> list[str]:
    """Up to `budget` multi-character pieces learned by byte-pair merges over `_WORDS`.

    Every piece is the merge of two earlier pieces (or characters), so SentencePiece's merge
    loop can always reach it; earlier merges get higher scores, as in a BPE-trained SPM model.
    """
    seqs = [list("\u2581" + w) for w in _WORDS]
    weights = [1.0 / (i + 8) for i in range(len(_WORDS))]
    pieces: dict[str, None] = {}
    while len(pieces) < budget:
        counts: dict[tuple[str, str], float] = {}
        for seq, wt in zip(seqs, weights):
            for pair in zip(seq, seq[1:]):
                counts[pair] = counts.get(pair, 0.0) + wt
        if not counts:
            break
        a, b = max(counts, key=lambda p: (counts[p], p))
        pieces.setdefault(a + b)
        seqs = [_merge_pair(seq, a, b) if len(seq) > 1 else seq for seq in seqs]
    return list(pieces)


def synth_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style vocab: (pieces, scores, token types) with exactly `n_vocab` entries; see `_vocab`."""
    toks, scores, types = _vocab(n_vocab)
    return list(toks), list(scores), list(types)


@functools.lru_cache(maxsize=8)
def _vocab(n_vocab: int) -> tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
    """Build the vocab (cached: writing a family builds it once).

    Ids 0..2 are <unk>, <s>, </s>; ids 3..258 the byte tokens <0x00>..<0xFF>; then every
    printable ASCII character (space as '\u2581'), then pieces from byte-pair merges over common
    English words (so English tokenizes into words and word pieces, not bytes); any rest is
    '<unusedN>' (type UNUSED). Scores: 0 for special and byte tokens, -rank for pieces.
    """
    if n_vocab < _MIN_VOCAB:
        raise QdbgError(f"synthetic vocab needs at least {_MIN_VOCAB} tokens, got {n_vocab}")
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    merged = _bpe_pieces(n_vocab - len(toks) - len(_CHARS))
    pieces = _CHARS + [p for p in merged if p not in _CHARS]
    toks += pieces
    types += [TokenType.NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    for i in range(len(toks), n_vocab):
        toks.append(f"<unused{i}>")
        types.append(TokenType.UNUSED)
        scores.append(-1e9)
    return tuple(toks), tuple(scores), tuple(int(t) for t in types)


# ---------------------------------------------------------------------------------------------
# quantization and writing

_GGUF_PY_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)


def quantize_rows(rows: np.ndarray, qtype: Q, name: str = "") -> np.ndarray:
    """[n_rows, n_per_row] F32 -> tensor data for GGUFWriter: F32/F16 arrays or uint8 [n_rows, row_bytes].

    Uses `qdbg.quant.quantize`; while that is missing (or does not know a legacy type yet) the
    legacy block types fall back to gguf-py. UnsupportedError names the tensor when no quantizer
    can produce `qtype`.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if qtype == Q.F32:
        return rows
    if qtype == Q.F16:
        return rows.astype(np.float16)
    import qdbg.quant as qmod
    data = None
    fn = getattr(qmod, "quantize", None)
    if fn is not None:
        try:
            data = fn(rows, qtype)
        except UnsupportedError:
            if qtype not in _GGUF_PY_TYPES:
                raise
    if data is None:
        if qtype not in _GGUF_PY_TYPES:
            raise UnsupportedError(f"tensor {name!r}: no quantizer for {qtype.name} (qdbg.quant.quantize missing)")
        import gguf.quants
        data = gguf.quants.quantize(rows, qtype)
    if isinstance(data, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(data, dtype=np.uint8)
    else:
        arr = np.asarray(data).view(np.uint8)
    return arr.reshape(rows.shape[0], -1)


def plan_types(spec: SynthSpec, ftype: str) -> dict[str, Q]:
    """Per-tensor types llama.cpp's quantizer would choose for `spec` in `ftype`."""
    return tensor_types(tensor_shapes(spec), ftype, spec.n_layer, n_head=spec.n_head,  # type: ignore[arg-type]
                        n_head_kv=spec.n_head_kv, arch=spec.arch)


def _add_metadata(w: GGUFWriter, spec: SynthSpec, ftype: str) -> None:
    w.add_name(f"synth-{spec.arch}")
    w.add_file_type(ftype_info(ftype).llama_ftype)
    w.add_quantization_version(QUANT_VERSION)
    w.add_context_length(spec.n_ctx)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)  # type: ignore[arg-type]
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_layer_norm_rms_eps(spec.rms_eps)  # type: ignore[arg-type]
    w.add_rope_freq_base(spec.rope_base)  # type: ignore[arg-type]
    if spec.arch == "gemma3":
        w.add_sliding_window(spec.sliding_window)  # type: ignore[arg-type]
    toks, scores, types = synth_vocab(spec.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)


class SynthCache:
    """Weights of one spec and their quantized data, shared by the members of a family.

    Pass one instance to several `write_gguf` calls so that each (tensor, type) pair is
    generated and quantized once.
    """

    def __init__(self, spec: SynthSpec) -> None:
        self.spec = spec
        self.weights = synth_weights(spec)
        self.data: dict[tuple[str, Q], np.ndarray] = {}

    def get(self, name: str, qtype: Q) -> np.ndarray:
        """Data of tensor `name` in `qtype` as GGUFWriter takes it (1D tensors stay F32)."""
        key = (name, qtype)
        if key not in self.data:
            w = self.weights[name]
            self.data[key] = w if w.ndim == 1 else quantize_rows(w, qtype, name)
        return self.data[key]


def write_gguf(spec: SynthSpec, path: str | os.PathLike, ftype: str, *, cache: SynthCache | None = None,
               progress: Progress | None = None) -> Path:
    """Write `spec` as one GGUF file of type `ftype` at `path`, atomically.

    `ftype` is a key of `qdbg.quant.mixes.FTYPES` (or of LLAMA_MIXES: llama.cpp's non-pure legacy
    mixes such as "MOSTLY_Q4_0", whose output tensor is Q6_K).
    The file appears complete or not at all (written to a hidden temporary file in the same
    directory, then renamed). UnsupportedError if a tensor needs a type no quantizer provides.
    `progress` (qdbg.progress) hears of each tensor before it is quantized.
    """
    ftype_info(ftype)  # validates the name early
    path = Path(path)
    if cache is None:
        cache = SynthCache(spec)
    elif cache.spec != spec:
        raise QdbgError("write_gguf: cache was built for another SynthSpec")
    types = plan_types(spec, ftype)
    w = GGUFWriter(None, spec.arch)
    _add_metadata(w, spec, ftype)
    names = list(tensor_shapes(spec))
    for i, name in enumerate(names):
        qtype = types[name]
        report(progress, f"{ftype}: {name}", i, len(names))
        data = cache.get(name, qtype)
        w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    return write_gguf_atomic(w, path)


def write_family(spec: SynthSpec, out_dir: str | os.PathLike, ftypes: Iterable[str],
                 progress: Progress | None = None) -> dict[str, Path]:
    """Write `spec` in each of `ftypes` as out_dir/synth-{arch}-{ftype}.gguf; weights are generated once.

    `progress` (qdbg.progress) counts tensors over all the files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ftypes = list(ftypes)
    report(progress, "generating weights", 0, None)
    cache = SynthCache(spec)
    n = len(tensor_shapes(spec))
    files = {}
    for k, ft in enumerate(ftypes):
        step = None if progress is None else \
            (lambda what, done, total, k=k: progress(what, k * n + done, len(ftypes) * n))
        files[ft] = write_gguf(spec, out / f"synth-{spec.arch}-{ft}.gguf", ft, cache=cache, progress=step)
    return files
