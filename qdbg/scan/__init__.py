"""`qdbg scan`: many prompts through A and B, where they disagree, ranked.

prompts.py reads the prompt file; work.py is the per-prompt work (one function, the same in every
runner); runners.py runs it inline, in worker processes, or on a Dask cluster; summary.py ranks the
results and sums them up. The printing lives in qdbg.cli_scan.
"""

from __future__ import annotations

from qdbg.scan.prompts import PromptItem, read_prompts
from qdbg.scan.summary import rank, summarize
from qdbg.scan.work import PromptResult, ScanConfig, scan_prompt

__all__ = ["PromptItem", "PromptResult", "ScanConfig", "rank", "read_prompts", "scan_prompt", "summarize"]
