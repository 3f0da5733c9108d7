"""docs/evidence.md is written by several benchmarks: each owns the section between its two markers."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_section"]


def write_section(text: str, path: Path, start: str, end: str) -> None:
    """Replace the section of `path` between `start` and `end` by `text` (append it when absent); keep the rest."""
    current = path.read_text(encoding="utf-8") if path.exists() else "# Evidence\n"
    if start in current and end in current:
        head, rest = current.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        updated = head + text + ("\n" + tail if tail else "")
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    path.write_text(updated, encoding="utf-8")
