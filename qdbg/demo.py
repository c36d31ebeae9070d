"""The built-in demo pair: the shipped tiny model requantized to Q4_K_M and Q5_K_M on first run.

The model lives in qdbg/data/ (trained by tools/train_demo_model.py on Python's own source). The
two files are made with qdbg's own llama.cpp-exact quantizers and cached under
$XDG_CACHE_HOME/qdbg/demo (or ~/.cache/qdbg/demo); a changed source model makes new files.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

from qdbg.errors import QdbgError

DEMO_TYPES = ("Q4_K_M", "Q5_K_M")
# a prompt on which the two quantizations pick different next tokens (see qdbg/data/DEMO_MODEL.md)
DEMO_PROMPT = "def "


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qdbg" / "demo"


def source_model() -> Path:
    """The shipped demo model (F16 GGUF in package data)."""
    data = resources.files("qdbg") / "data"
    try:
        found = sorted(p for p in data.iterdir() if p.name.endswith(".gguf"))
    except (FileNotFoundError, NotADirectoryError):
        found = []
    if found:
        return Path(str(found[0]))
    return _synthetic_fallback()


def _synthetic_fallback() -> Path:
    """Without a shipped model, a seeded synthetic llama (F32) written once to the cache."""
    from qdbg.synth import SynthSpec, write_gguf

    p = cache_dir() / "synth-llama-F32.gguf"
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        write_gguf(SynthSpec(arch="llama", n_layer=4), p, "F32")
    return p


def demo_pair(progress=print) -> dict[str, Path]:
    """{ftype: path} of the demo's quantized files, made and cached on first use."""
    from qdbg.requant import requantize

    src = source_model()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for ft in DEMO_TYPES:
        p = out / f"{src.stem}-{digest}-{ft}.gguf"
        if not p.exists():
            progress(f"quantizing the demo model to {ft} (first run only) -> {p}")
            requantize(src, p, ft)
        files[ft] = p
    return files


def demo_prompt() -> str:
    """The demo prompt recorded in the model's metadata, else DEMO_PROMPT."""
    from qdbg.gguf_file import GGUFFile

    try:
        with GGUFFile(source_model()) as g:
            p = g.metadata.get("qdbg.demo.prompt")
    except QdbgError:
        p = None
    return p if isinstance(p, str) and p else DEMO_PROMPT
