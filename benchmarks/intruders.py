"""Intruder dimensions of finished runs (issue 18), against the paper's finding (Shuttleworth et al.,
arXiv 2410.21228: low-rank LoRA creates intruder dimensions, full fine-tuning few or none).

Each run is diagnosed once with `imprint diagnose RUN --what intruders` (kept in the run's
diagnostics.json, so a rerun only reports); runs are grouped by a label (the method, from the
run's metadata, or the folder's parent for image runs); the table gives, per group, the mean
number of intruders per changed matrix and in all (top 10 singular vectors of each matrix) at
each epsilon, and the matrices compared.

    python benchmarks/intruders.py --runs 'benchmarks/_work/lm_forgetting/runs/facts-*-n150-s?'
    python benchmarks/intruders.py --toy-methods lora:3e-3 krona:1.5e-2 full:1e-4 --toy-subjects 3 \\
        --section "toy world, LoRA / KronA / full"

--toy-methods trains toy-world runs itself, one per METHOD:LR on each of the first --toy-subjects
held-out subjects, with toyworld_quality.py's LoRA recipe (64 px, batch 4, 200 steps, prior
preservation with the recipe's class images) and only the method and lr changed, into
benchmarks/_work/intruders/toy/METHOD-lrLR/SUBJECT, and adds them to the table (no --runs needed).

Each group's per-run results are also kept in benchmarks/records/intruders/ (committed), so the
table can be rewritten (--report-only) after the run folders are gone.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from results_file import write_section  # noqa: E402

from imprint.util.files import write_json_atomic  # noqa: E402

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


def train_toy(subject, method: str, lr: float, out: Path) -> Path:
    """A toy-world run of `method` on `subject`: toyworld_quality's LoRA recipe, the method and lr changed."""
    if (out / "metadata.json").is_file():
        return out
    import dataclasses

    from toyworld_quality import COMMON, CONFIGS, WORK, _class_folder

    from imprint.image.settings import build_config
    from imprint.image.train import train
    from imprint.methods import METHODS
    from imprint.toyworld.pretrain import MODEL_DIR
    from imprint.toyworld.subjects import write_subject

    values = dict(COMMON, **dict(CONFIGS["lora"], method=method, lr=lr))
    if "rank" not in {f.name for f in dataclasses.fields(METHODS[method].Settings)}:
        values.pop("rank")
    photos = write_subject(subject, WORK / "subjects" / subject.name)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    train(build_config({}, dict(values, model=str(MODEL_DIR), images=str(photos), class_name=subject.class_name,
                                output=str(out), class_images=str(_class_folder(subject.class_name, values["seed"])))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=[], help="run folders or glob patterns")
    parser.add_argument("--section", default="language", help="the RESULTS.md heading's last word(s)")
    parser.add_argument("--toy-methods", nargs="*", default=[], help="METHOD:LR toy-world runs to train and "
                        "diagnose (see above)")
    parser.add_argument("--toy-subjects", type=int, default=3)
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "intruders"))
    parser.add_argument("--records", default=str(REPO / "benchmarks" / "records" / "intruders"),
                        help="where each section's per-run results are kept (committed)")
    parser.add_argument("--report-only", action="store_true", help="train and diagnose nothing: the records' table")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    record = Path(args.records) / (re.sub(r"[^a-z0-9]+", "-", args.section.lower()).strip("-") + ".json")
    if args.report_only:
        if not record.is_file():
            sys.exit(f"{record}: no record of the section {args.section!r}; run without --report-only first")
        groups = json.loads(record.read_text())
    else:
        runs = sorted({Path(p) for pattern in args.runs for p in glob.glob(pattern)
                       if (Path(p) / "metadata.json").is_file()})
        if args.runs and not runs:
            sys.exit(f"--runs {' '.join(args.runs)}: no finished run folders")
        if args.toy_methods:
            from imprint.toyworld.subjects import SUBJECTS

            for spec in args.toy_methods:
                method, _, lr = spec.partition(":")
                for subject in SUBJECTS[:args.toy_subjects]:
                    out = Path(args.work) / "toy" / f"{method}-lr{float(lr):g}" / subject.name
                    runs.append(train_toy(subject, method, float(lr), out))
        if not runs:
            sys.exit("give --runs or --toy-methods")
        groups = {}
        for run in runs:
            groups.setdefault(label(run), []).append(diagnosed(run))
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, groups)
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
            + ", ".join(sorted({str(Path(p)) for p in args.runs} | {f"toy {spec}" for spec in args.toy_methods}))
            + (f" on the first {args.toy_subjects} toy-world subjects" if args.toy_methods else "")
            + ".\n\n" + "\n".join(rows))
    print(write_section(args.results, f"## Intruder dimensions: {args.section} (issue 18)", body))


if __name__ == "__main__":
    main()
