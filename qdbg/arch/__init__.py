"""Architectures: one small module each, registered by name; adding one touches no other.

A module defines `ARCH = "name"` and `def config(md, tensors, where) -> ModelConfig`, where `md` is
the GGUF metadata, `tensors` maps tensor names to their numpy-order shapes, and `where` is a
"file: " prefix for error messages. Modules are discovered by scanning this package.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Mapping

from qdbg.arch.config import ModelConfig
from qdbg.errors import GGUFError, UnsupportedError

ConfigFn = Callable[[Mapping[str, Any], Mapping[str, tuple[int, ...]], str], ModelConfig]

_REGISTRY: dict[str, ConfigFn] = {}
_FEATURES: dict[str, dict[str, bool]] = {}
_GRAPH_NAMES: dict[str, dict[str, str]] = {}


def _discover() -> None:
    if _REGISTRY:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name == "config" or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        arch = getattr(mod, "ARCH", None)
        if arch:
            _REGISTRY[arch] = mod.config
            _FEATURES[arch] = dict(getattr(mod, "FEATURES", {}))
            _GRAPH_NAMES[arch] = dict(getattr(mod, "GRAPH_NAMES", {}))


def supported() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def features(arch: str) -> dict[str, bool]:
    """The optional block tensors an architecture has (qkv_bias, qk_norm, post_norms)."""
    _discover()
    if arch not in _FEATURES:
        raise UnsupportedError(f"unsupported architecture '{arch}' (supported: {', '.join(supported())})")
    return dict(_FEATURES[arch])


def graph_names(arch: str) -> dict[str, str]:
    """{qdbg op base name: llama.cpp graph name} for ops this architecture's graph names where
    others leave the node unnamed (llama's `attn_out`)."""
    _discover()
    return dict(_GRAPH_NAMES.get(arch, {}))


def config_from_metadata(
    md: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]], where: str = ""
) -> ModelConfig:
    """Build the ModelConfig of a GGUF file from its metadata and tensor shapes."""
    _discover()
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(f"{where}missing metadata key 'general.architecture'")
    fn = _REGISTRY.get(arch)
    if fn is None:
        raise UnsupportedError(
            f"{where}unsupported architecture '{arch}' (supported: {', '.join(supported())})"
        )
    return fn(md, tensors, where)


__all__ = ["ModelConfig", "config_from_metadata", "features", "graph_names", "supported"]
