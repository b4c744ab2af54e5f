"""report.html: a self-contained page (images beside it, relative paths) that opens offline."""

from __future__ import annotations

import html
import os
import uuid
from pathlib import Path

from imprint.evaluate.diagnostics import read_diagnostics, section_html

NAMES = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "pres": "PRES", "div": "DIV", "blip_t": "BLIP-T",
         "fidelity": "fidelity", "alignment": "alignment"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.prompt { text-align: left; max-width: 18em; }
img { width: 96px; height: 96px; margin: 1px; image-rendering: pixelated; }
.note { color: #666; font-size: 90%; }
td.real img { width: 48px; height: 48px; }
"""

SCRIPT = """<script>
// how many images really rendered (read by the headless-browser test; harmless elsewhere)
window.addEventListener("load", () => {
  const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesShown = shown;
  document.body.dataset.imagesTotal = document.images.length;
});
</script>
"""


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_interval(entry) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    return f"{entry['mean']:.3f} <span class=note>[{entry['low']:.3f}, {entry['high']:.3f}]</span>"


def images_html(paths: list[str]) -> str:
    return "".join(f'<img src="{html.escape(p)}" alt="{html.escape(p)}">' for p in paths)


def write_report(result: dict, path: Path) -> Path:
    metrics = result["metrics"]
    esc = html.escape
    head = "".join(f"<th>{NAMES.get(m, m)}</th>" for m in metrics)
    rows = [
        ("this run", result["summary"]),
        ("base model", result["baseline"]["summary"]),
        ("real images (leave-one-out)", result["real_images"]["summary"]),
    ]
    summary = "".join(
        f"<tr><td class=prompt>{esc(name)}</td>"
        + "".join(f"<td>{fmt_interval(values.get(m))}</td>" for m in metrics) + "</tr>"
        for name, values in rows)
    per_prompt_metrics = [m for m in metrics if result["prompts"] and m in result["prompts"][0]]
    base_by_prompt = {r["prompt"]: r for r in result["baseline"]["prompts"]}
    real = images_html(result["real_images"]["images"])
    prompt_rows = []
    for row in result["prompts"]:
        base = base_by_prompt.get(row["prompt"], {})
        scores = "".join(f"<td>{fmt(row.get(m))}<br><span class=note>{fmt(base.get(m))}</span></td>"
                         for m in per_prompt_metrics)
        prompt_rows.append(
            f"<tr><td class=prompt>{esc(row['prompt'])}</td>{scores}"
            f"<td>{images_html(row['images'])}</td><td>{images_html(base.get('images', []))}</td>"
            f"<td class=real>{real}</td></tr>")
    protocol = "".join(f"<li><b>{esc(NAMES.get(k, k))}</b>: {esc(v)}</li>"
                       for k, v in result["protocol"].items())
    settings = ", ".join(f"{k} {esc(str(v))}" for k, v in result["settings"].items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>imprint evaluation: {esc(result['run'])}</title>
<style>{STYLE}</style></head><body>
<h1>Evaluation of {esc(result['run'])}</h1>
<p>method {esc(result['method'])}, base model {esc(result['base_model'])}, metrics backend
{esc(result['backend'])}; {settings}.</p>
<h2>Summary</h2>
<table id="summary"><tr><th></th>{head}</tr>{summary}</table>
<h2>Real images</h2><div id="real">{images_html(result['real_images']['images'])}</div>
<h2>Class prompt ({esc(result['settings'].get('class_prompt', ''))}), personalised model</h2>
<div id="class">{images_html(result.get('class_images', []))}</div>
<h2>Per prompt</h2>
<p class=note>each score: this run, and below it the base model's.</p>
<table id="prompts"><tr><th>prompt</th>{''.join(f'<th>{NAMES.get(m, m)}</th>' for m in per_prompt_metrics)}
<th>this run</th><th>base model</th><th>real images</th></tr>{''.join(prompt_rows)}</table>
<h2>Protocol</h2><ul>{protocol}</ul>
{section_html(read_diagnostics(result["run"]), "../")}
{SCRIPT}</body></html>
"""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path
