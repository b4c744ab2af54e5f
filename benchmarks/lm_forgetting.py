"""What each language-model method learns and forgets (issue 17), on the embedded SmolLM2.

Every method trains on each chosen shipped task with the same step budget and batch, for each
seed; each run is one `imprint lm train` process (its peak RSS is its own) that evaluates itself
on the task's held-out test split and the control suite; LiNeS is then applied to the LoRA and
full runs. The figures: target accuracy, control retention, KL drift, trainable parameters, step
time (median of the log's step intervals) and peak RSS; and the paired differences each seed
paper's claim is about, per item (held-out example or control prompt) over tasks and seeds,
with a 95% interval, beside the noise floor (LoRA against LoRA with the next seed).

    python benchmarks/lm_forgetting.py --tasks facts --seeds 0 1 --steps 150
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from results_file import write_section  # noqa: E402

LRS = {"lora": 2e-4, "full": 1e-5, "hft": 1e-5, "lift": 2e-4, "lofit": 5e-3, "ltsft": 1e-5, "locft": 5e-4}
CLAIMS = [  # (paper, the claim, method a, method b, what must hold of a - b)
    ("HFT", "forgets less than full fine-tuning at a similar target", "hft", "full"),
    ("LIFT", "matches or beats LoRA at an equal budget, with less forgetting", "lift", "lora"),
    ("LiNeS", "recovers control retention at a small target cost", "lora-lines", "lora"),
    ("LiNeS", "(on full fine-tuning)", "full-lines", "full"),
    ("Illusion of equivalence", "LoRA forgets less than full fine-tuning but learns less", "lora", "full"),
    ("LT-SFT", "(sparse, against full)", "ltsft", "full"),
    ("LoFiT", "(head offsets, against LoRA)", "lofit", "lora"),
    ("LocFT-BF", "(one weight, against LoRA)", "locft", "lora"),
]


def one_run(args, task: str, method: str, seed: int, work: Path) -> Path:
    """Train (and evaluate) one run in its own process; -> its folder."""
    run = work / "runs" / f"{task}-{method}-s{seed}"
    if (run / "evaluation.json").is_file():
        return run
    if (run / "metadata.json").is_file():  # trained, not evaluated
        subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "evaluate", str(run), "--max-new-tokens",
                        str(args.max_new_tokens)], check=True)
        return run
    data = work / "tasks" / task
    flags = ["--data", str(data / "train.jsonl"), "--validation-data", str(data / "test.jsonl"),
             "--method", method, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--seed", str(seed), "--lr", str(LRS[method]), "--checkpoint-every", str(args.steps // 2),
             "--max-new-tokens", str(args.max_new_tokens), "--output", str(run)]
    if run.exists():
        flags.append("--resume")
    code = ("import resource, sys, json; from imprint.cli import main; rc = main(sys.argv[1:]); "
            f"open({str(run) + '.rss'!r}, 'w').write(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
            "sys.exit(rc)")
    started = time.time()
    subprocess.run([sys.executable, "-c", code, "lm", "train", *flags], check=True)
    print(f"{run.name}: {time.time() - started:.0f} s", flush=True)
    return run


def lines_run(args, run: Path) -> Path:
    out = run.with_name(run.name + "-lines")
    if not (out / "evaluation.json").is_file():
        subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "lines", str(run), "--output", str(out),
                        "--alphas", args.alphas, "--max-new-tokens", str(args.max_new_tokens)], check=True)
    return out


def step_seconds(run: Path) -> float | None:
    times = [json.loads(line)["time"] for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return statistics.median(gaps) if gaps else None


def interval(values: list[float]) -> tuple[float, float, float, int]:
    """Mean and 95% interval (normal; the pairs are items, many per run)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, mean - 1.96 * sd / math.sqrt(n), mean + 1.96 * sd / math.sqrt(n), n


def paired(evaluations: dict, a: str, b: str, tasks, seeds, seed_b=None) -> dict[str, tuple]:
    """Per item a - b (1 right, 0 wrong) over every task and seed: target and control."""
    target, control = [], []
    for task in tasks:
        for seed in seeds:
            ea, eb = evaluations.get((task, a, seed)), evaluations.get((task, b, seed if seed_b is None else seed_b(seed)))
            if ea is None or eb is None:
                continue
            target += [float(x) - float(y) for x, y in zip(ea["target_right"], eb["target_right"])]
            shared = ea["control_right"].keys() & eb["control_right"].keys()
            control += [float(ea["control_right"][k]) - float(eb["control_right"][k]) for k in sorted(shared)]
    return {"target": interval(target) if target else None, "control": interval(control) if control else None}


def fmt_interval(entry) -> str:
    if entry is None:
        return "-"
    mean, low, high, n = entry
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] (n {n})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["facts", "transform", "arithmetic"])
    parser.add_argument("--methods", nargs="+", default=list(LRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="LiNeS sweep")
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "lm_forgetting"))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    args = parser.parse_args()
    work = Path(args.work)
    os.environ.setdefault("IMPRINT_CACHE", str(work / "cache"))
    for task in args.tasks:
        if not (work / "tasks" / task / "test.jsonl").is_file():
            subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "tasks", "--output", str(work / "tasks"),
                            "--task", task], check=True)
    evaluations, rows = {}, []
    for task in args.tasks:
        for seed in args.seeds:
            for method in args.methods:
                run = work / "runs" / f"{task}-{method}-s{seed}"
                if args.report_only and not (run / "evaluation.json").is_file():
                    continue
                run = one_run(args, task, method, seed, work)
                evaluation = json.loads((run / "evaluation.json").read_text())
                metadata = json.loads((run / "metadata.json").read_text())
                rss = json.loads(Path(str(run) + ".rss").read_text()) / 1024 if Path(str(run) + ".rss").is_file() else None
                evaluations[(task, method, seed)] = evaluation
                rows.append((task, method, seed, evaluation, metadata["trainable_parameters"], step_seconds(run), rss))
                if method in ("lora", "full") and not (args.report_only and not
                                                      (run.with_name(run.name + "-lines") / "evaluation.json").is_file()):
                    lines = lines_run(args, run)
                    evaluations[(task, f"{method}-lines", seed)] = json.loads((lines / "evaluation.json").read_text())
                    chosen = json.loads((lines / "lines.json").read_text())["chosen"]
                    rows.append((task, f"{method}-lines (alpha {chosen['alpha']:g})", seed,
                                 evaluations[(task, f"{method}-lines", seed)], metadata["trainable_parameters"], None, None))
    import torch

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    table = ["| task | method | seed | target | base target | control retention | KL drift | trained parameters "
             "| s/step | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for task, method, seed, e, params, seconds, rss in rows:
        retention = e["control"]["retention"]
        table.append(f"| {task} | {method} | {seed} | {e['target']['accuracy']:.3f} | {e['target']['base_accuracy']:.3f} "
                     f"| {'-' if retention is None else f'{retention:.3f}'} | {e['kl_drift']:.4f} | {params:,} "
                     f"| {'-' if seconds is None else f'{seconds:.2f}'} | {'-' if rss is None else f'{rss:.0f}'} |")
    floor = paired(evaluations, "lora", "lora", args.tasks, args.seeds[:-1], seed_b=lambda s: args.seeds[args.seeds.index(s) + 1]) \
        if len(args.seeds) > 1 else {"target": None, "control": None}
    claims = ["| paper | claim | a - b | target (a - b) | control retention (a - b) |", "|---|---|---|---|---|",
              f"| noise floor | LoRA against LoRA with the next seed | lora - lora' | {fmt_interval(floor['target'])} "
              f"| {fmt_interval(floor['control'])} |"]
    for paper, claim, a, b in CLAIMS:
        difference = paired(evaluations, a, b, args.tasks, args.seeds)
        claims.append(f"| {paper} | {claim} | {a} - {b} | {fmt_interval(difference['target'])} "
                      f"| {fmt_interval(difference['control'])} |")
    done = [r for r in rows if r[1] in args.methods]
    body = (f"{len(done)} runs finished of the {len(args.tasks) * len(args.methods) * len(args.seeds)} asked. "
            f"`python benchmarks/lm_forgetting.py --tasks {' '.join(args.tasks)} --methods {' '.join(args.methods)} "
            f"--seeds {' '.join(map(str, args.seeds))} --steps {args.steps} --batch-size {args.batch_size}` on {device}; "
            f"SmolLM2-135M-Instruct (embedded); each method at its default lr ({', '.join(f'{m} {LRS[m]:g}' for m in args.methods)}); "
            f"greedy answers of at most {args.max_new_tokens} tokens; LiNeS swept over alpha {args.alphas}.\n\n"
            + "\n".join(table) + "\n\nPaired differences per item (a held-out example, or a control prompt the base "
            "answers right) over tasks and seeds, mean and 95% interval; an interval that holds 0 is no difference "
            "seen.\n\n" + "\n".join(claims))
    print(write_section(args.results, "## Language models: what each method learns and forgets (issue 17)", body))


if __name__ == "__main__":
    main()
