"""One error family for everything qdbg rejects.

The CLI turns any QdbgError into one line on stderr and exit status 2. Messages name the file,
tensor, key or value at fault, so that line is enough to act on.
"""

from __future__ import annotations


class QdbgError(Exception):
    """Base of every error qdbg raises on purpose (bad input, unsupported content, misuse)."""


class GGUFError(QdbgError):
    """A GGUF file is malformed: bad magic, truncated, hostile counts or offsets, wrong value types."""


class UnsupportedError(QdbgError):
    """Valid input that qdbg does not handle: an unknown architecture, quant type or tokenizer."""


class ModelMismatchError(QdbgError):
    """Two models that should be quantizations of one model differ (architecture, shapes, vocab)."""


class ExpressionError(QdbgError):
    """A malformed breakpoint expression; `column` is the 1-based column of the fault."""

    def __init__(self, message: str, expr: str = "", column: int = 0) -> None:
        self.expr = expr
        self.column = column
        where = f" at column {column}" if column else ""
        super().__init__(f"{message}{where}" + (f": {expr!r}" if expr else ""))


class TraceError(QdbgError):
    """A trace file is corrupt, truncated, or of an unknown version."""


class TemplateError(QdbgError):
    """A chat template failed to render or reached for something the sandbox forbids."""


class UsageError(QdbgError):
    """The command line asks for something that cannot be done (missing file, prompt too long...)."""
