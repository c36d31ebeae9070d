"""Formatting for the report: numbers, percentages, token text and code spans that cannot break a
Markdown table, and the table itself."""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from qdbg.records import Record


def num(x: Any, fmt: str = ".4g") -> str:
    """A number for a table cell: None as '—', NaN/Inf spelled out, bools as yes/no."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not isinstance(x, (int, float)):
        return txt(str(x))
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if x != x else ("inf" if x > 0 else "-inf")
    return format(x, fmt) if isinstance(x, float) or "g" not in fmt else str(x)


def pct(a: Any, b: Any) -> str:
    """(a - b) / |b| in percent, signed."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
        return "—"
    if not (math.isfinite(a) and math.isfinite(b)):
        return "NaN"
    if a == b:
        return "+0.00%"
    return ("+inf" if a > b else "-inf") if b == 0 else f"{100.0 * (a - b) / abs(b):+.2f}%"


def txt(s: str) -> str:
    """Token text safe in a table cell: control characters escaped, Markdown specials backslashed."""
    out = []
    for i, c in enumerate(s):
        if c == "_" and 0 < i < len(s) - 1 and s[i - 1].isalnum() and s[i + 1].isalnum():
            out.append(c)  # intraword: never emphasis in GFM
        elif c in "\\`*_[]<>|#":
            out.append("\\" + c)
        elif ord(c) < 32 or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029":
            out.append(json.dumps(c)[1:-1] if c in "\n\r\t" else f"\\\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def code(s: str) -> str:
    """`s` as a code span that cannot break a table row."""
    s = "".join(" " if ord(c) < 32 or c in "\u2028\u2029" else c for c in str(s)).replace("|", "\\|")
    fence = "``" if "`" in s else "`"
    pad = " " if "`" in s else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def piece(p: Any) -> str:
    return "—" if p is None else f"«{txt(str(p))}»"


def table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def get(rec: Record, key: str, metric: str) -> Any:
    return (rec.pairs.get(key) or {}).get(metric)




def code_label(label: str) -> str:
    """'name (pass 3)' with the name in code style."""
    name, sep, rest = label.partition(" (")
    return code(name) + (f" ({rest}" if sep else "")


def file_name(path: str) -> str:
    """The last component of a model path, as table text."""
    return txt(path.replace("\\", "/").rsplit("/", 1)[-1])
