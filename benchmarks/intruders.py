"""Intruder dimensions of finished runs (issue 18), against the paper's finding (Shuttleworth et al.,
arXiv 2410.21228: low-rank LoRA creates intruder dimensions, full fine-tuning few or none).

Each run is diagnosed once with `imprint diagnose RUN --what intruders` (kept in the run's
diagnostics.json, so a rerun only reports); runs are grouped by a label (the method, from the
run's metadata, or the folder's parent for image runs); the table gives, per group, the mean
number of intruders per changed matrix and in all (top 10 singular vectors of each matrix) at
each epsilon, and the matrices compared.

    python benchmarks/intruders.py --runs 'benchmarks/_work/lm_forgetting/runs/facts-*-n150-s?'
    python benchmarks/intruders.py --runs 'benchmarks/_work/toyworld/runs/lora/*' \\
        --toy-methods krona:1e-3 full:1e-4 --toy-subjects 3 --section "toy world"

--toy-methods trains, for the first --toy-subjects subjects of the first --runs group, runs of other
methods with the LoRA runs' own settings (subject, steps, batch, prior preservation) and the lr
given, into benchmarks/_work/intruders/toy/METHOD/SUBJECT, and adds them to the table.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from results_file import write_section  # noqa: E402

SHOWN_EPSILONS = (0.3, 0.5, 0.7, 0.9)


def diagnosed(run: Path) -> dict:
    path = run / "diagnostics.json"
    if not (path.is_file() and "intruders" in json.loads(path.read_text())):
        subprocess.run([sys.executable, "-m", "imprint.cli", "diagnose", str(run), "--what", "intruders"], check=True)
    return json.loads(path.read_text())["intruders"]


def label(run: Path) -> str:
    metadata = json.loads((run / "metadata.json").read_text())
    if metadata.get("task") == "lm":
        task = run.name.split("-", 1)[0]
        return f"{task} / {metadata['method']}"
    return f"{run.parent.name} ({metadata['method']})"


TOY_COPIED = ("images", "class_name", "token", "instance_prompt", "resolution", "batch_size", "steps", "class_prompt",
              "class_inference_steps",
              "num_class_images", "class_images", "prior_loss_weight", "seed")


def train_toy(lora_run: Path, method: str, lr: str, out: Path) -> Path:
    """A run of `method` with the LoRA run's own settings (its hyperparameters), the lr given."""
    if (out / "metadata.json").is_file():
        return out
    hyper = json.loads((lora_run / "metadata.json").read_text())["hyperparameters"]
    flags = [f"--{k.replace('_', '-')}={hyper[k]}" for k in TOY_COPIED if hyper.get(k) is not None]
    flags += ["--prior-preservation"] if hyper.get("prior_preservation") else []
    subprocess.run([sys.executable, "-m", "imprint.cli", "train", "--model", hyper["model"], "--method", method,
                    "--lr", lr, "--checkpoint-every", "0", "--no-final-samples", "--output", str(out), *flags], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="run folders or glob patterns")
    parser.add_argument("--section", default="language", help="the RESULTS.md heading's last word(s)")
    parser.add_argument("--toy-methods", nargs="*", default=[], help="METHOD:LR image runs to train beside the "
                        "LoRA runs given (see above)")
    parser.add_argument("--toy-subjects", type=int, default=3)
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "intruders"))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    runs = sorted({Path(p) for pattern in args.runs for p in glob.glob(pattern)
                   if (Path(p) / "metadata.json").is_file()})
    if not runs:
        sys.exit(f"--runs {' '.join(args.runs)}: no finished run folders")
    if args.toy_methods:  # every method on the same subjects
        runs = runs[:args.toy_subjects]
    for spec in list(args.toy_methods):
        method, _, lr = spec.partition(":")
        for lora_run in runs[:args.toy_subjects]:
            runs.append(train_toy(lora_run, method, lr, Path(args.work) / "toy" / method / lora_run.name))
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(label(run), []).append(diagnosed(run))
    head = ", ".join(f"{e:g}" for e in SHOWN_EPSILONS)
    rows = [f"| runs | n | matrices changed / compared | intruders per changed matrix (epsilon {head}) "
            f"| intruders in all (epsilon {head}) |", "|---|---|---|---|---|"]
    for name, results in sorted(groups.items()):
        epsilons = results[0]["epsilons"]
        index = [epsilons.index(e) for e in SHOWN_EPSILONS]
        changed = sum(r["matrices_changed"] for r in results) / len(results)
        compared = sum(r["matrices_compared"] for r in results) / len(results)
        totals = [sum(r["total"][i] for r in results) / len(results) for i in index]
        per_matrix = [t / changed if changed else 0.0 for t in totals]
        rows.append(f"| {name} | {len(results)} | {changed:.0f} / {compared:.0f} | "
                    + ", ".join(f"{v:.2f}" for v in per_matrix) + " | " + ", ".join(f"{v:.0f}" for v in totals) + " |")
    body = ("Intruder dimensions (Shuttleworth et al.): of the top 10 left singular vectors of each changed "
            "matrix, those whose largest |cosine| with any singular vector of the base matrix is below epsilon; "
            "means over the runs of a group. `imprint diagnose RUN --what intruders`; runs: "
            + ", ".join(sorted({str(Path(p)) for p in args.runs})) + ".\n\n" + "\n".join(rows))
    print(write_section(args.results, f"## Intruder dimensions: {args.section} (issue 18)", body))


if __name__ == "__main__":
    main()
