"""`imprint compare RUN...`: several runs' evaluation summaries in one table (markdown + HTML)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from imprint.util.errors import ImprintError
from imprint.evaluate.report import NAMES


def load_summaries(runs: list[str]) -> list[dict]:
    out = []
    for run in runs:
        path = Path(run) / "eval" / "metrics.json"
        if not path.is_file():
            raise ImprintError(f"{run}: no eval/metrics.json; run `imprint evaluate {run}` first")
        try:
            with open(path) as f:
                result = json.load(f)
            out.append({"run": str(run), "method": result.get("method"), "metrics": result["metrics"],
                        "summary": result["summary"], "baseline": result["baseline"]["summary"]})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ImprintError(f"{path}: damaged ({type(e).__name__}: {e}); run `imprint evaluate {run}` again") from e
    return out


def _cell(entry) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    return f"{entry['mean']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def compare_table(summaries: list[dict]) -> tuple[str, str]:
    """-> (markdown, html) of one row per run, plus the first run's base model."""
    metrics = summaries[0]["metrics"]
    rows = [(s["run"], s["method"], s["summary"]) for s in summaries]
    rows.append((f"base model (of {summaries[0]['run']})", "-", summaries[0]["baseline"]))
    header = ["run", "method"] + [NAMES.get(m, m) for m in metrics]
    md = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    md += ["| " + " | ".join([name, method] + [_cell(values.get(m)) for m in metrics]) + " |"
           for name, method, values in rows]
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in [name, method] + [_cell(values.get(m)) for m in metrics])
        + "</tr>" for name, method, values in rows)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>imprint compare</title></head><body>"
            "<table border=1 cellpadding=4><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr>" + cells + "</table></body></html>\n")
    return "\n".join(md) + "\n", page


def compare_runs(runs: list[str], output_html: str | None = None) -> str:
    markdown, page = compare_table(load_summaries(runs))
    if output_html:
        target = Path(output_html)
        if target.is_dir():
            raise ImprintError(f"--output {output_html}: is a folder; pass the .html file to write")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(page)
        except OSError as e:
            raise ImprintError(f"--output {output_html}: cannot write it ({e.strerror}); choose another path") from e
    return markdown
