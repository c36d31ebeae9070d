"""The user's key map: a TOML file in the user's config folder that remaps keys by binding id.

    # ~/.config/qdbg/keys.toml  ($XDG_CONFIG_HOME/qdbg/keys.toml; $QDBG_KEYS names another file)
    [keys]
    step = "n"             # binding ids as listed in `?` help (step, back, next_layer, ...)
    back = "p,left"        # several keys, comma-separated, as Textual names them

A missing file is no error (the defaults stay); a malformed one, an unknown binding id or a
value that is not a string is a QdbgError naming the file and the entry.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Iterable

from qdbg.errors import QdbgError


def user_keymap_path() -> Path:
    """$QDBG_KEYS, else $XDG_CONFIG_HOME/qdbg/keys.toml (default ~/.config/qdbg/keys.toml)."""
    env = os.environ.get("QDBG_KEYS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "qdbg" / "keys.toml"


def load_keymap(path: Path, ids: Iterable[str]) -> dict[str, str]:
    """{binding id: keys} from the [keys] table of `path` ({} when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise QdbgError(f"cannot read key map {path}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise QdbgError(f"key map {path} is not valid TOML: {e}") from None
    extra = sorted(set(data) - {"keys"})
    if extra:
        raise QdbgError(f"key map {path}: unknown table or key {extra[0]!r} (put bindings under [keys])")
    keys = data.get("keys", {})
    if not isinstance(keys, dict):
        raise QdbgError(f"key map {path}: 'keys' must be a table ([keys])")
    known = set(ids)
    out: dict[str, str] = {}
    for bid, value in keys.items():
        if bid not in known:
            raise QdbgError(f"key map {path}: no binding has the id {bid!r} (ids: {', '.join(sorted(known))})")
        if not isinstance(value, str) or not value.strip():
            raise QdbgError(f"key map {path}: {bid} must be a key name as a string, e.g. {bid} = \"n\"")
        out[bid] = ",".join(k.strip() for k in value.split(",") if k.strip())
    return out
