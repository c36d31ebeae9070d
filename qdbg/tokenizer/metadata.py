"""Read a GGUF file's metadata as a plain dict for Tokenizer.from_gguf.

Uses qdbg.gguf_file.GGUFFile when it is available (fast, lazy string arrays); otherwise gguf-py's
GGUFReader, keeping string-array entries as raw bytes so that token texts that are not valid UTF-8
survive exactly.
"""

from __future__ import annotations

import os
from typing import Any

from qdbg.errors import GGUFError

__all__ = ["read_metadata"]


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """GGUF key -> value for the file at `path` (tensors are not read)."""
    try:
        from qdbg.gguf_file import GGUFFile
    except ImportError:
        return read_metadata_gguf_py(path)
    f = GGUFFile(path)
    try:
        return dict(f.metadata)
    finally:
        f.close()


def read_metadata_gguf_py(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The same through gguf-py (string arrays as lists of bytes, strings as str, arrays as lists)."""
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(os.fspath(path))
    except (OSError, ValueError) as e:
        raise GGUFError(f"{path}: cannot read GGUF metadata: {e}") from None
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if not field.types:
            continue
        t = field.types[0]
        if t == GGUFValueType.ARRAY and len(field.types) > 1 and field.types[1] == GGUFValueType.STRING:
            out[key] = [bytes(field.parts[i]) for i in field.data]
        elif t == GGUFValueType.ARRAY:
            out[key] = [field.parts[i][0].item() for i in field.data]
        elif t == GGUFValueType.STRING:
            out[key] = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
        else:
            out[key] = field.parts[field.data[0]][0].item()
    return out
