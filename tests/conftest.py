"""Shared fixtures: small synthetic models built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `goldens`

from qdbg.synth import SynthCache, SynthSpec, write_gguf  # noqa: E402


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory):
    """`synth_model(arch, ftype, **spec)` -> path of a small synthetic GGUF (built once)."""
    out = tmp_path_factory.mktemp("synth")
    caches: dict[SynthSpec, SynthCache] = {}
    built: dict[tuple, Path] = {}

    def make(arch: str = "llama", ftype: str = "Q4_K_M", **kw) -> Path:
        key = (arch, ftype, tuple(sorted(kw.items())))
        if key not in built:
            spec = SynthSpec(arch=arch, **kw)
            cache = caches.setdefault(spec, SynthCache(spec))
            name = "-".join([arch, ftype] + [f"{k}{v}" for k, v in sorted(kw.items())])
            built[key] = write_gguf(spec, out / f"{name}.gguf", ftype, cache=cache)
        return built[key]

    return make


@pytest.fixture(scope="session")
def abr_trace(synth_model):
    """`abr_trace(n_decode)` -> snapshot of a llama A/B/R session (Q4_K_M, Q5_K_M, F16) over a
    6-token prompt and `n_decode` tokens decoded by A (built once per count)."""
    from qdbg.session import open_session
    from qdbg.trace import snapshot

    built: dict[int, object] = {}

    def make(n_decode: int):
        if n_decode not in built:
            s = open_session({"A": str(synth_model("llama", "Q4_K_M")), "B": str(synth_model("llama", "Q5_K_M")),
                              "R": str(synth_model("llama", "F16"))}, [1, 17, 42, 99, 300, 7])
            s.run_to_end()
            s.decode(n_decode, "a")
            s.run_to_end()
            built[n_decode] = snapshot(s)
        return built[n_decode]

    return make
