"""Print which llama.cpp build the installed llama-cpp-python carries (what qdbg's exact mode matches).

Usage: python tools/llama_build_info.py  -- llama-cpp-python version, ggml version and commit, and
llama_print_system_info() (the CPU features the CPU backend was compiled with: AVX2, AVX512, REPACK...).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ggml_oracle  # noqa: E402


def main() -> None:
    for key, value in ggml_oracle.system_info().items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
