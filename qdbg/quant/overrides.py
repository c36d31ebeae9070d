"""llama-quantize's `--tensor-type PATTERN=TYPE` and `--tensor-type-file FILE` overrides.

The rules, read from llama.cpp (tools/quantize/quantize.cpp and src/llama-quant.cpp as bundled
with llama-cpp-python 0.3.36) and checked against its `llama_model_quantize` by
tests/test_requant_overrides.py:

- `PATTERN=TYPE`: split at the first '='; an empty pattern or type is an error. The CLI lowercases
  the pattern; TYPE is a ggml type name, matched case-insensitively (`q6_k`, `Q6_K`, `bf16`).
- A file holds such arguments separated by any whitespace (`file >> arg`), read in order.
- PATTERN is a regular expression (std::regex, ECMAScript) *searched* in the tensor name:
  `attn_v=q8_0` hits every `blk.N.attn_v.weight`; `^blk\\.3\\.ffn_down\\.weight$` hits one tensor.
  qdbg compiles it with Python's `re`, which agrees with ECMAScript on the usual syntax.
- The first pattern that matches decides; the order of the arguments matters.
- Overrides apply only when the file type's default type is quantized (not F32/F16/BF16 files),
  and only to tensors llama.cpp quantizes at all (never to norms or biases).
- An overridden tensor skips the mix rules, including their counters: llama.cpp counts attn_v
  and ffn_down tensors inside the mix rule, so overriding `blk.0.attn_v.weight` shifts the
  counter every later attn_v is judged by (see `qdbg.quant.mixes.tensor_types`).
- The row-length fallback still applies afterwards (a Q4_K override on a 384-column row becomes
  Q5_0, as the mix's own choice would).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from gguf import GGMLQuantizationType as Q

from qdbg.errors import UsageError

__all__ = ["TensorTypeOverride", "parse_tensor_type", "parse_tensor_type_file", "match_override",
           "format_tensor_type", "ggml_type_name"]

def ggml_type_name(qtype: Q) -> str:
    """ggml's own name of a type (type_traits .type_name): `q4_K`, `q8_0`, `f16`, `bf16`."""
    name = Q(qtype).name
    return name[:-1].lower() + "K" if name.endswith("_K") else name.lower()


def _parse_type(text: str, arg: str) -> Q:
    for t in Q:
        if t.name.lower() == text.lower():
            return t
    raise UsageError(f"--tensor-type {arg!r}: invalid ggml type {text!r}")


@dataclass(frozen=True)
class TensorTypeOverride:
    """One `PATTERN=TYPE`: tensors whose name `re.search`es `pattern` become `qtype`."""

    pattern: str
    qtype: Q

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_rx", re.compile(self.pattern))
        except re.error as e:
            raise UsageError(f"--tensor-type pattern {self.pattern!r} is not a valid regular "
                             f"expression ({e})") from None

    def matches(self, name: str) -> bool:
        return self._rx.search(name) is not None  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return format_tensor_type(self.pattern, self.qtype)


def format_tensor_type(pattern: str, qtype: Q) -> str:
    """The `PATTERN=TYPE` argument for llama-quantize (type in ggml's spelling, e.g. q6_K)."""
    return f"{pattern}={ggml_type_name(qtype)}"


def parse_tensor_type(arg: str) -> TensorTypeOverride:
    """One `--tensor-type` argument, as llama-quantize's parse_tensor_type reads it."""
    name, sep, qt = arg.partition("=")
    if not sep:
        raise UsageError(f"--tensor-type {arg!r}: expected PATTERN=TYPE")
    if not name:
        raise UsageError(f"--tensor-type {arg!r}: missing tensor name pattern")
    if not qt:
        raise UsageError(f"--tensor-type {arg!r}: missing quantization type")
    return TensorTypeOverride(name.lower(), _parse_type(qt, arg))


def parse_tensor_type_file(text: str) -> list[TensorTypeOverride]:
    """A `--tensor-type-file`: whitespace-separated `PATTERN=TYPE` arguments, in order."""
    return [parse_tensor_type(a) for a in text.split()]


def match_override(name: str, overrides: Sequence[TensorTypeOverride]) -> Q | None:
    """The type the first matching override gives `name`, or None when none matches."""
    for o in overrides:
        if o.matches(name):
            return o.qtype
    return None


def to_args(overrides: Iterable[TensorTypeOverride]) -> list[str]:
    """argv form: ['--tensor-type', 'PATTERN=TYPE', ...]."""
    out: list[str] = []
    for o in overrides:
        out += ["--tensor-type", str(o)]
    return out
