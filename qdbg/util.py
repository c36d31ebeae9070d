"""Small shared helpers: atomic file writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file so that readers see the old content or the new one, never a mix.

    `write(f)` fills a temporary file in the same folder; it is flushed, fsynced and renamed over
    `path`. On any error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:
            dfd = os.open(path.parent or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_gguf_atomic(writer, path: Path) -> Path:
    """Write a filled gguf.GGUFWriter (created with path None) to `path` atomically.

    The file goes to a hidden temporary name in the same folder and is renamed over `path` only
    when complete; on failure the temporary file is removed and an OSError becomes a QdbgError.
    """
    import secrets

    from qdbg.errors import QdbgError

    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException as e:
        writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise QdbgError(f"{path}: cannot write ({e.strerror or e})") from e
        raise
    return path
