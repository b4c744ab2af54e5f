"""Write one section of benchmarks/RESULTS.md, replacing the section of the same heading."""

from __future__ import annotations

from pathlib import Path


def write_section(path: str | Path, heading: str, body: str) -> str:
    section = f"{heading}\n\n{body.strip()}\n"
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if heading in text:
        before, _, after = text.partition(heading)
        rest = after.split("\n## ", 1)
        text = before + section + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    return section
