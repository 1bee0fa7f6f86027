"""What every benchmark does with its Markdown table: print it, and append it to ``--write FILE``."""

from __future__ import annotations

import os


def emit(report: str, path: str | None) -> None:
    print(report)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a") as f:
            f.write(report.rstrip("\n") + "\n\n")
