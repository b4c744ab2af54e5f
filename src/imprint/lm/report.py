"""report.html of language-model runs: one row per run (target, control retention, KL drift,
trainable parameters), the trade-off as a plot (target gain across, control retention up, one
point per run), and each run's lost control answers; a self-contained page that opens offline."""

from __future__ import annotations

import html
from pathlib import Path

from imprint.evaluate.diagnostics import read_diagnostics, section_html
from imprint.evaluate.report import STYLE, fmt
from imprint.util.files import write_text_atomic

WIDTH, HEIGHT, PAD = 420, 300, 40


def name_of(result: dict) -> str:
    return result.get("name") or Path(result["run"]).name


def scatter(results: list[dict]) -> str:
    """SVG: x = target gain (accuracy minus the base's), y = control retention, both in [0, 1]
    (a gain below 0 is drawn at the left edge)."""
    def x(v: float) -> float:
        return PAD + max(0.0, min(1.0, v)) * (WIDTH - 2 * PAD)

    def y(v: float) -> float:
        return HEIGHT - PAD - max(0.0, min(1.0, v)) * (HEIGHT - 2 * PAD)

    parts = [f'<svg width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
             f'<rect x="{PAD}" y="{PAD}" width="{WIDTH - 2 * PAD}" height="{HEIGHT - 2 * PAD}" fill="none" stroke="#999"/>',
             f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">target gain (accuracy - base accuracy)</text>',
             f'<text x="12" y="{HEIGHT / 2}" transform="rotate(-90 12 {HEIGHT / 2})" text-anchor="middle">'
             'control retention</text>']
    for tick in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{x(tick)}" y="{HEIGHT - PAD + 14}" text-anchor="middle">{tick:g}</text>')
        parts.append(f'<text x="{PAD - 4}" y="{y(tick) + 4}" text-anchor="end">{tick:g}</text>')
    for r in results:
        if r["control"]["retention"] is None:
            continue
        cx, cy = x(r["target"]["gain"]), y(r["control"]["retention"])
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="#36c"/>'
                     f'<text x="{cx + 6:.1f}" y="{cy - 6:.1f}">{html.escape(name_of(r))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_report(results: list[dict], path: Path) -> Path:
    rows = []
    for r in results:
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in r["control"]["retention_by_kind"].items())
        rows.append(
            f"<tr><td class=prompt>{html.escape(name_of(r))}</td><td class=prompt>{html.escape(str(r.get('method')))}</td>"
            f"<td>{fmt(r['target']['accuracy'])}</td><td>{fmt(r['target']['base_accuracy'])}</td>"
            f"<td>{fmt(r['control']['retention'])}</td><td class=prompt>{html.escape(kinds)}</td>"
            f"<td>{r['kl_drift']:.4f}</td><td>{r.get('trainable_parameters') or '-'}</td></tr>")
    lost = []
    for r in results:
        for item in r["examples"]["control_lost"]:
            lost.append(f"<tr><td class=prompt>{html.escape(name_of(r))}</td><td class=prompt>{html.escape(item['prompt'])}"
                        f"</td><td class=prompt>{html.escape(item['base'])}</td><td class=prompt>{html.escape(item['run'])}</td></tr>")
    # a one-run report (the run's own) shows the run's diagnostics (imprint diagnose)
    diagnostics = section_html(read_diagnostics(results[0]["run"])) if len(results) == 1 else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>imprint lm report</title>
<style>{STYLE}</style></head><body>
<h1>What the runs learned and what they forgot</h1>
<p class=note>target: held-out examples answered right; control retention: of the control prompts the base model
answers right, the share the run still answers right; KL drift: mean KL(base || run) of the next-token
distributions on the base model's own answers to general prompts (0 for the base). Greedy answers.</p>
<table><tr><th>run</th><th>method</th><th>target</th><th>base target</th><th>control retention</th>
<th>by kind</th><th>KL drift</th><th>trained parameters</th></tr>{''.join(rows)}</table>
{scatter(results)}
<h2>Control answers lost</h2>
<table><tr><th>run</th><th>prompt</th><th>base answer</th><th>run answer</th></tr>{''.join(lost) or '<tr><td colspan=4>none</td></tr>'}</table>
{diagnostics}
</body></html>"""
    write_text_atomic(path, page)
    return path
