"""Requantize a GGUF file to another file type with qdbg's own (llama.cpp bit-exact) quantizers.

The per-tensor types come from qdbg.quant.mixes (llama.cpp's llama_tensor_get_type, no imatrix),
the metadata is copied with general.file_type updated, and the file is written atomically. This is
what `qdbg demo` uses to make its Q4_K_M / Q5_K_M pair, and `qdbg quantize` exposes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from gguf import GGUFValueType, GGUFWriter

from qdbg.errors import UsageError
from qdbg.gguf_file import GGUFFile
from qdbg.progress import Progress, report
from qdbg.util import check_output, write_gguf_atomic

_SKIP_KEYS = {"general.file_type", "general.quantization_version", "general.alignment"}


def _copy_metadata(src: GGUFFile, w: GGUFWriter) -> None:
    for key, val in src.metadata.items():
        if key in _SKIP_KEYS or key == "general.architecture":
            continue
        vt = src.metadata_types[key]
        if vt == GGUFValueType.ARRAY:
            sub = src.metadata_array_types[key]
            if sub == GGUFValueType.STRING:
                val = [val.get_bytes(i) for i in range(len(val))]
                w.add_array(key, val)
            else:
                w.add_key_value(key, list(np.asarray(val).tolist()), vt, sub_type=sub)
        else:
            w.add_key_value(key, val, vt)


def requantize(src_path: str | os.PathLike, dst_path: str | os.PathLike, ftype: str,
               progress: Progress | None = None, overrides: Sequence = ()) -> Path:
    """Write `src_path` as `ftype` (e.g. "Q4_K_M") at `dst_path`; returns the path.

    `overrides` are llama-quantize's `--tensor-type` rules (qdbg.quant.overrides.TensorTypeOverride,
    in order); they need a quantized file type, as in llama.cpp (which ignores them otherwise).
    `progress` (qdbg.progress) hears of each tensor before it is quantized.
    """
    from qdbg.arch import config_from_metadata
    from qdbg.quant import dequantize, quantize
    from qdbg.quant.mixes import ftype_info, tensor_types
    from gguf import GGMLQuantizationType as Q

    info = ftype_info(ftype)
    if overrides and info.default in (Q.F32, Q.F16, Q.BF16):
        raise UsageError(f"--tensor-type needs a quantized file type: llama.cpp ignores overrides "
                         f"for {ftype}")
    dst = Path(dst_path)
    check_output(dst)  # before the work
    with GGUFFile(src_path) as src:
        shapes = {n: t.shape for n, t in src.tensors.items()}
        cfg = config_from_metadata(src.metadata, shapes, f"{Path(src_path).name}: ")
        types = tensor_types(shapes, ftype, cfg.n_layer, n_head=cfg.n_head, n_head_kv=cfg.n_head_kv,
                             arch=cfg.arch, overrides=tuple(overrides))
        w = GGUFWriter(None, cfg.arch)
        _copy_metadata(src, w)
        w.add_file_type(info.llama_ftype)
        w.add_quantization_version(2)
        for i, (name, t) in enumerate(src.tensors.items()):
            report(progress, f"{name} -> {types[name].name}", i, len(src.tensors))
            f32 = dequantize(src.raw(name), t.qtype, t.shape).astype(np.float32).reshape(t.shape)
            qt = types[name]
            if f32.ndim == 1 or qt.name == "F32":
                w.add_tensor(name, f32)
            else:
                w.add_tensor(name, quantize(f32, qt), raw_dtype=qt)
        write_gguf_atomic(w, dst)
    return dst
