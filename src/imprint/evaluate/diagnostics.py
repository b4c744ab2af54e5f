"""The diagnostics of a run (imprint diagnose, RUN/diagnostics.json) as lines for the terminal and as a
section of the run's report page; here, below every report, so any report can show them."""

from __future__ import annotations

import html
import json
from pathlib import Path


def read_diagnostics(run: str | Path) -> dict | None:
    path = Path(run) / "diagnostics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def intruder_line(d: dict) -> str:
    pairs = ", ".join(f"{e:g}: {t}" for e, t in zip(d["epsilons"], d["total"]))
    return (f"intruder dimensions (top {d['k']} of each of {d['matrices_changed']} changed matrices, "
            f"by epsilon): {pairs}")


def summary_lines(d: dict) -> list[str]:
    lines = []
    if "intruders" in d:
        lines.append(intruder_line(d["intruders"]))
    if "tuco" in d:
        lines.append("TuCo: " + ", ".join(f"{name} prompts {v['mean']:.3f}" for name, v in d["tuco"].items()))
    if "conjugate" in d:
        c = d["conjugate"]
        lines.append(f"conjugate prompting ({c['transform']}): control accuracy base {c['base_accuracy']:.2f} -> "
                     f"{c['base_accuracy_transformed']:.2f} transformed; run {c['run_accuracy']:.2f} -> "
                     f"{c['run_accuracy_transformed']:.2f}; {c['recovered']} of {c['lost']} lost answers recovered")
    if "contrastive" in d:
        lines.append(f"contrastive generation: {len(d['contrastive']['texts'])} texts, e.g. "
                     + " | ".join(repr(t["text"][:60]) for t in d["contrastive"]["texts"][:3]))
    if "class_images" in d:
        lines.append(f"class prompt images: {', '.join(d['class_images']['images'].values())}")
    return lines


def section_html(d: dict | None, images_prefix: str = "") -> str:
    """The diagnostics section of a report (empty where the run has none); image paths are relative
    to the run folder, prefixed with `images_prefix` (the report's way back to it)."""
    if not d:
        return ""
    esc = html.escape
    parts = ["<h2>Diagnostics</h2>"]
    if "intruders" in d:
        i = d["intruders"]
        parts.append(f"<p>{esc(intruder_line(i))}. An intruder is a top singular vector of a fine-tuned matrix with "
                     "|cosine| below epsilon to every singular vector of the base matrix (Shuttleworth et al.).</p>")
    if "tuco" in d:
        rows = "".join(f"<tr><td class=prompt>{esc(name)}</td><td>{v['mean']:.3f}</td></tr>" for name, v in d["tuco"].items())
        parts.append("<p>TuCo: the fine-tuning's share of the last token's residual stream (0 for the base model).</p>"
                     f"<table><tr><th>prompts</th><th>mean TuCo</th></tr>{rows}</table>")
    if "conjugate" in d:
        parts.append(f"<p>{esc(summary_lines({'conjugate': d['conjugate']})[0])}.</p>")
    if "contrastive" in d:
        rows = "".join(f"<tr><td class=prompt>{esc(t['text'])}</td><td>{t['mean_score']:.2f}</td></tr>"
                       for t in d["contrastive"]["texts"])
        parts.append("<p>Contrastive generation: text the run finds far likelier than its base model "
                     f"(mean log-ratio per token).</p><table><tr><th>text</th><th>score</th></tr>{rows}</table>")
    if "class_images" in d:
        c = d["class_images"]
        images = "".join(f'<figure><img src="{esc(images_prefix + p)}" alt="{esc(name)}"><figcaption>{esc(name)}'
                         "</figcaption></figure>" for name, p in c["images"].items())
        parts.append(f"<p>The class prompt ({esc(c['prompt'])}), base model and run, the same seeds.</p>{images}")
    return "".join(parts)
