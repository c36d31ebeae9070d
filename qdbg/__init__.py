"""qdbg: a step-through debugger for quantized LLMs.

Data flows one way: GGUF file (gguf_file) -> model (model, arch) -> engine (a generator of
named op results) -> session (two engines in lockstep) -> trace/report -> CLI and TUI.
Nothing outside qdbg.tui and qdbg.cli imports Textual or Rich.
"""

__version__ = "0.1.0"
