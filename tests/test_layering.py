"""The core never imports the UI: each core module, imported alone, leaves textual and rich unloaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = ["qdbg.gguf_file", "qdbg.arch", "qdbg.model", "qdbg.quant", "qdbg.engine.forward", "qdbg.expr",
        "qdbg.trace", "qdbg.replay", "qdbg.report",
        "qdbg.tokenizer", "qdbg.metrics", "qdbg.breakpoints", "qdbg.session", "qdbg.synth",
        "qdbg.requant", "qdbg.demo", "qdbg.records", "qdbg.scope", "qdbg.catalogue", "qdbg.source",
        "qdbg.live", "qdbg.debugger", "qdbg.findings"]


@pytest.mark.parametrize("module", CORE)
def test_core_module_does_not_import_ui(module):
    code = (f"import sys, {module}; bad = [m for m in ('textual', 'rich') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"{module} pulls in {r.stdout.strip()} {r.stderr[-300:]}"
