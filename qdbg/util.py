"""Saving files without destroying what the name points at: one core behind every save.

A regular file (or a symlink to one, however long the chain) is replaced atomically: the new
content goes to a hidden temporary file beside the real target, is fsynced, takes the old file's
mode (a new file gets 0o666 minus the umask, as open() would) and is renamed over it. A FIFO or a
character device (/dev/null, a tty, /dev/stdout) is written straight into: no rename, no fsync.
A directory, socket or block device is refused with one line. '-' is standard output for text.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TextIO

from qdbg.errors import QdbgError, UsageError

STDOUT = "-"


class SaveError(QdbgError, OSError):
    """A save failed in the OS (no space, no folder, permission, broken pipe): one line naming the
    file for the CLI, and still an OSError (with its errno) for code that catches those."""

    @classmethod
    def wrap(cls, path: str | os.PathLike, e: OSError) -> SaveError:
        err = cls(f"{path}: cannot write ({e.strerror or e})")
        err.errno = e.errno
        return err


def check_output(path: str | os.PathLike, *, text: bool = False) -> None:
    """Raise a QdbgError now if `path` can never be saved to (call before long work).

    `text` says the output is text, for which '-' means standard output.
    """
    if not (text and str(path) == STDOUT):
        where, _, in_place = _target(path)
        parent = where.parent
        if not in_place and not parent.is_dir():
            raise UsageError(f"{path}: cannot write ({parent} is not a directory)")
        if not in_place and not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{path}: cannot write ({parent}: permission denied)")


def _target(path: str | os.PathLike) -> tuple[Path, os.stat_result | None, bool]:
    """(where to write, its current stat or None, write in place?) for a save to `path`."""
    if str(path) == STDOUT:
        raise UsageError("'-' (standard output) is only for text outputs; name a file")
    p = Path(path)
    try:
        st = os.stat(p)  # follows symlinks, including /dev/stdout's /proc/self/fd/1
    except FileNotFoundError:
        st = None  # a new file, or a dangling symlink whose target is created
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"{path}: symlink loop") from None
        raise SaveError.wrap(path, e) from None
    if st is not None:
        kind = _refused_kind(st.st_mode)
        if kind:
            raise UsageError(f"{path}: is a {kind}, expected a file name")
        if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            return p, st, True
    try:
        real = p.resolve()
    except (RuntimeError, OSError):  # 3.11 raises RuntimeError on a loop, later versions OSError
        raise UsageError(f"{path}: symlink loop") from None
    if st is not None:
        try:
            same = os.path.samestat(os.stat(real), st)
        except OSError:
            same = False
        if not same:  # a magic link to a deleted or unnamed file: only writing in place reaches it
            return p, st, True
    return real, st, False


def _refused_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISSOCK(mode):
        return "socket (qdbg writes files, FIFOs and character devices)"
    if stat.S_ISBLK(mode):
        return "block device"
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        return "special file"
    return ""


def save_file(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """The one core behind every save: `fill(tmp)` writes the complete content to the regular
    file `tmp` (already created); this function puts it where `path` points, as the module
    docstring says. OS errors, the filler's too, become SaveError naming `path`. On any failure a
    file at `path` is untouched (a FIFO or device may have had part of the content) and no
    temporary file is left.
    """
    where, st, in_place = _target(path)
    try:
        if in_place:
            _fill_in_place(where, fill, truncate=st is not None and stat.S_ISREG(st.st_mode))
        else:
            _fill_and_rename(where, st, fill)
    except OSError as e:
        raise SaveError.wrap(path, e) from e
    return Path(path)


def _fill_and_rename(real: Path, st: os.stat_result | None, fill: Callable[[Path], None]) -> None:
    tmp = real.parent / f".{real.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # the umask applies
    try:
        try:
            if st is not None:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    with contextlib.suppress(OSError):  # only root may give a file away
                        os.fchown(fd, st.st_uid, st.st_gid)
            fill(tmp)
            os.fsync(fd)  # one inode: this flushes what fill wrote through its own handle
        finally:
            os.close(fd)
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(real.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _fill_in_place(target: Path, fill: Callable[[Path], None], *, truncate: bool) -> None:
    # Writers may seek (GGUF padding, zip headers) and numpy needs a real file, so the content is
    # spooled to a private temporary file and then copied into the FIFO or device.
    fd, spool = tempfile.mkstemp(prefix="qdbg-", suffix=".tmp")
    os.close(fd)
    try:
        fill(Path(spool))
        flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
        out = os.open(target, flags)  # never creates; truncates only a regular file
        with open(spool, "rb") as src, os.fdopen(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(spool)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Save binary content: `write(f)` fills a fresh file, save_file() puts it at `path`."""
    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return save_file(path, fill)


def write_gguf_atomic(writer, path: str | os.PathLike) -> Path:
    """Save a filled gguf.GGUFWriter (created with path None) to `path` through save_file()."""
    def fill(tmp: Path) -> None:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    try:
        return save_file(path, fill)
    finally:
        writer.close()


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Save text at `path` through save_file(); '-' writes it to standard output."""
    if str(path) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    data = text.encode(encoding)
    atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def open_output(path: str | os.PathLike, *, encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text stream for an output named on the command line (`scan --csv FILE`, `-o FILE`).

    '-' yields standard output. Otherwise the target is checked at once, the text is collected,
    and it is saved through save_file() when the block ends without an exception.
    """
    if str(path) == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    check_output(path, text=True)
    buf = io.StringIO()
    yield buf
    write_text(path, buf.getvalue(), encoding=encoding)
