"""The prompt file of `qdbg scan`: one prompt per line, or JSONL with "text" or "messages".

A file is JSONL when its name ends in .jsonl/.ndjson or its first non-empty line is a JSON object;
then every non-empty line must be one, with a string "text" or a list "messages" of
{"role", "content"} (a chat). Empty lines are skipped in both forms.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdbg.errors import UsageError

JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class PromptItem:
    """One prompt: its 0-based index among the prompts, its line in the file, text or messages."""

    index: int
    line: int
    text: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None   # ((role, content), ...)

    def label(self) -> str:
        """The prompt as one line of text (the last message's content for a chat)."""
        if self.messages is not None:
            return self.messages[-1][1] if self.messages else ""
        return self.text or ""


def _is_jsonl(path: Path, lines: list[str]) -> bool:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if not first.startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _messages(where: str, raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{where}: \"messages\" must be a non-empty list of {{role, content}}")
    out = []
    for m in raw:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise UsageError(f"{where}: each message needs a string \"role\" and \"content\"")
        out.append((m["role"], m["content"]))
    return tuple(out)


def read_prompts(path: str | os.PathLike) -> list[PromptItem]:
    """The prompts of a file, in order; UsageError (naming the line) for anything malformed."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such prompt file")
    if p.is_dir():
        raise UsageError(f"{path}: is a directory, expected a prompt file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.splitlines()
    jsonl = _is_jsonl(p, lines)
    items: list[PromptItem] = []
    for no, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        if not jsonl:
            items.append(PromptItem(index=len(items), line=no, text=ln))
            continue
        where = f"{path}:{no}"
        try:
            obj = json.loads(ln)
        except ValueError as e:
            raise UsageError(f"{where}: malformed JSON line ({e})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: expected a JSON object with \"text\" or \"messages\"")
        if isinstance(obj.get("text"), str):
            items.append(PromptItem(index=len(items), line=no, text=obj["text"]))
        elif "messages" in obj:
            items.append(PromptItem(index=len(items), line=no, messages=_messages(where, obj["messages"])))
        else:
            raise UsageError(f"{where}: a JSON line needs a string \"text\" or a list \"messages\"")
    if not items:
        raise UsageError(f"{path}: no prompts (the file is empty)")
    return items
