"""What each language-model method learns and forgets (issue 17), on the embedded SmolLM2.

Every method trains on each chosen shipped task with the same step budget and batch, for each
seed; each run is one `imprint lm train` process (its peak RSS is the training's own), evaluated
afterwards on the task's held-out test split and the control suite; LiNeS is then applied to the
LoRA and full runs, its alpha chosen on the task's validation split and the chosen run measured
on the test split. The test split is used for nothing but the figures. The figures: target accuracy, control retention, KL drift, trainable parameters, step
time (median of the log's step intervals) and peak RSS; and the paired differences each seed
paper's claim is about, per item (held-out example or control prompt) over both seeds, for each task and
pooled over the tasks, with a 95% interval, beside the noise floor (LoRA, and full fine-tuning, against itself with the next seed).

Each method's lr is chosen per task, before its runs, on validation loss: a short probe run
(--probe-steps) at each of three candidate lrs, with seed 0, on the whole training file, its loss
measured on the task's validation split (held out like the test and apart from it); the lr
whose validation loss is lowest wins (work/lrs.json keeps the choice and every probe's loss). A
short probe favours lrs that learn fast; the probe length is reported beside the figures. Where
the best is the smallest or largest lr tried, the next rung of a half-decade ladder is probed too
(four times at most), so a choice at the edge of the grid is not taken for a minimum. LT-SFT and LoFiT
train in two phases with an lr each; the probe chooses the lr of the phase that makes the result
(PHASE1_OF below). A variant trains a method at another's chosen lr instead (AT_LR_OF): HFT at full
fine-tuning's, the drop-in its paper describes.

Each finished run leaves a small record (its evaluation, trainable parameters, step time and peak
RSS) in benchmarks/records/lm_forgetting/, beside the lr choices (lrs.json); these are committed,
so the pass survives the loss of its work folder (the run folders, kept under --work, are large and
not committed): a run with a record is not trained again, and --report-only reads only records.

    python benchmarks/lm_forgetting.py --tasks facts --seeds 0 1 --steps 150
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "records" / "lm_forgetting"
sys.path.insert(0, str(REPO / "benchmarks"))
from results_file import write_section  # noqa: E402

from imprint.util.files import write_json_atomic  # noqa: E402

# lrs about half a decade apart; 0.3 and 1 for LoFiT's offsets (activation-space vectors, not weights),
# whose facts choice sat at 0.1 with the loss still falling (1.53 from 1.66)
LADDER = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
CANDIDATE_LRS = {  # three rungs around each paper's or tool's usual lr for the method
    "lora": [3e-4, 1e-3, 3e-3], "full": [3e-5, 1e-4, 3e-4], "hft": [3e-5, 1e-4, 3e-4], "lift": [1e-4, 3e-4, 1e-3],
    "lofit": [3e-3, 1e-2, 3e-2], "ltsft": [1e-3, 3e-3, 1e-2], "locft": [1e-4, 3e-4, 1e-3]}
# Methods with two lrs, one per phase: the lr probed (and the one in their row) is the lr of the phase
# that makes the result; phase 1 takes another method's chosen lr (a name) or the paper's (a number).
# - LT-SFT's phase 1 is full fine-tuning and takes full fine-tuning's chosen lr; phase 2's lr goes in as
#   --ltsft-phase2-lr-scale (phase 2 lr / phase 1 lr). With one lr for both, the probe chose 3e-3, at
#   which phase 1 diverged and the mask was noise (see RESULTS.md).
# - LoFiT's stage 1 (head scalings, which only pick the heads) takes the paper's 5e-3; stage 2's offsets,
#   the whole result, take --lofit-offset-lr. The first facts probe varied --lr, stage 1's alone, and its
#   validation losses were flat (1.809-1.846 over 3e-3..1e-1; see RESULTS.md).
PHASE1_OF = {"ltsft": "full", "lofit": 5e-3}
PHASE2_FLAGS = {  # (phase 2's lr, phase 1's) -> the flags that give phase 2 its lr
    "ltsft": lambda lr, first: ["--ltsft-phase2-lr-scale", f"{lr / first:g}"],
    "lofit": lambda lr, first: ["--lofit-offset-lr", str(lr)]}


# where the best lr is at an end of the candidates, probe up to this many rungs further; it was 2 until
# LocFT-BF's facts choice sat at the second extension (1e-2) with the loss still falling (0.60 from 1.08)
MAX_EXTENSIONS = 4
# Variants: a method trained at another method's chosen lr instead of a probe of its own. HFT's paper
# offers it as a drop-in for full fine-tuning in the same pipeline (its exact lrs were not read: only
# its abstract and summaries were reachable); the probe gave HFT 3x full fine-tuning's lr on facts.
AT_LR_OF = {"hft-at-full-lr": ("hft", "full")}
CLAIMS = [  # (paper, the claim, method a, method b, what must hold of a - b)
    ("HFT", "forgets less than full fine-tuning at a similar target", "hft", "full"),
    ("LIFT", "matches or beats LoRA at an equal budget, with less forgetting", "lift", "lora"),
    ("LiNeS", "recovers control retention at a small target cost", "lora-lines", "lora"),
    ("LiNeS", "(on full fine-tuning)", "full-lines", "full"),
    ("Illusion of equivalence (arXiv 2410.21228)", "at a similar target, LoRA is a worse model of the pre-training "
     "distribution than full fine-tuning: it forgets more", "lora", "full"),
    ("LoRA Learns Less and Forgets Less (arXiv 2405.09673)", "LoRA learns less and forgets less than full "
     "fine-tuning (the issue's wording of the claim above)", "lora", "full"),
    ("HFT", "(at full fine-tuning's lr, the paper's drop-in)", "hft-at-full-lr", "full"),
    ("LT-SFT", "(sparse, against full)", "ltsft", "full"),
    ("LoFiT", "comparable to LoRA with 20-200x fewer parameters (on truthfulness and reasoning tasks)", "lofit", "lora"),
    ("LocFT-BF", "edits (new facts) without sacrificing general capabilities; LoRA as the reference", "locft", "lora"),
]


def train_flags(args, method: str) -> list[str]:
    trained = AT_LR_OF[method][0] if method in AT_LR_OF else method
    return ["--method", trained, "--batch-size", str(args.batch_size)] + (["--padding-free"] if args.padding_free else [])


def lr_key(args, task: str, method: str) -> str:
    """The key of a (task, method) lr choice in the records' lrs.json (a variant's: its lr source's)."""
    method = AT_LR_OF[method][1] if method in AT_LR_OF else method
    return f"{task}/{method}/{args.probe_steps}/extended" + ("/phase2" if method in PHASE1_OF else "")


def phase1_lr(args, task: str, method: str, work: Path) -> float:
    first = PHASE1_OF[method]
    return first if isinstance(first, float) else choose_lr(args, task, first, work)


def lr_flags(args, task: str, method: str, lr: float, work: Path) -> list[str]:
    """--lr, and for a two-lr method phase 1's lr with phase 2's (the probed one) in its own flag."""
    if method not in PHASE1_OF:
        return ["--lr", str(lr)]
    first = phase1_lr(args, task, method, work)
    return ["--lr", str(first), *PHASE2_FLAGS[method](lr, first)]


def method_label(args, task: str, method: str, work: Path) -> str:
    if method not in PHASE1_OF:
        return method
    return f"{method}-p1lr{phase1_lr(args, task, method, work):g}"


def run_folder(args, work: Path, task: str, method: str, seed: int, lr: float) -> Path:
    return work / "runs" / f"{task}-{method_label(args, task, method, work)}-lr{lr:g}-n{args.steps}-s{seed}"


def choose_lr(args, task: str, method: str, work: Path) -> float:
    """The lr with the lowest validation loss after --probe-steps (see the opening lines): the
    method's three candidates, and further rungs of the ladder while the best is at an end."""
    if method in AT_LR_OF:
        return choose_lr(args, task, AT_LR_OF[method][1], work)

    def train_probe(lr: float, run: Path) -> None:
        subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "train", "--data",
                        str(work / "tasks" / task / "train.jsonl"), "--validation-data",
                        str(work / "tasks" / task / "validation.jsonl"), *train_flags(args, method),
                        *lr_flags(args, task, method, lr, work), "--steps", str(args.probe_steps), "--seed", "0",
                        "--checkpoint-every", "0", "--no-evaluate", "--output", str(run)], check=True)

    return ladder_search(Path(args.records) / "lrs.json", lr_key(args, task, method), f"{task} {method}",
                         CANDIDATE_LRS[method], work / "probe",
                         lambda lr: f"{task}-{method_label(args, task, method, work)}-lr{lr:g}-n{args.probe_steps}",
                         train_probe)


def ladder_search(path: Path, key: str, what: str, candidates, probes: Path, name_of, train_probe) -> float:
    """The lr of lowest validation loss among `candidates` and, while the best is at an end, up to
    MAX_EXTENSIONS further LADDER rungs; the choice goes into the records file `path` under `key`,
    each finished probe's loss under "_probes" (an interrupted search goes on from there).
    train_probe(lr, run folder) trains a probe run that writes its validation loss to its metadata."""
    chosen = read_record(path)
    if key in chosen:
        return chosen[key]["lr"]
    losses: dict[float, float] = {}

    def probe(lr: float) -> None:
        run = probes / name_of(lr)
        kept = read_record(path).get("_probes", {})
        if run.name in kept:  # a probe finished before the choice was made (the records keep it)
            losses[lr] = kept[run.name] if kept[run.name] is not None else math.inf
            return
        if not (run / "metadata.json").is_file():
            if run.exists():
                shutil.rmtree(run)
            train_probe(lr, run)
        loss = json.loads((run / "metadata.json").read_text())["validation_loss"]
        losses[lr] = loss if loss is not None and math.isfinite(loss) else math.inf
        every = read_record(path)
        every.setdefault("_probes", {})[run.name] = losses[lr] if math.isfinite(losses[lr]) else None
        write_record(path, every)

    for lr in candidates:
        probe(lr)
    for _ in range(MAX_EXTENSIONS):
        tried = sorted(losses)
        best = min(tried, key=losses.get)
        rung = LADDER.index(best) if best in LADDER else None
        if rung is None or best not in (tried[0], tried[-1]):
            break
        further = rung + (1 if best == tried[-1] else -1)
        if not 0 <= further < len(LADDER):
            break
        probe(LADDER[further])
    best = min(losses, key=losses.get)
    chosen = read_record(path)  # again: a probe may have chosen another lr
    chosen[key] = {"lr": best, "validation_loss": {f"{lr:g}": v for lr, v in sorted(losses.items())}}
    write_record(path, chosen)
    print(f"{what}: lr {best:g} (validation loss by lr: {chosen[key]['validation_loss']})", flush=True)
    return best


def probe_table(work: Path, args) -> str:
    """The lr probes' validation losses, per task and method (the chosen lr in bold)."""
    path = Path(args.records) / "lrs.json"
    chosen = read_record(path)
    rows = ["| task | method | validation loss after the probe, by lr |", "|---|---|---|"]
    for task in args.tasks:
        for method in args.methods:
            entry = chosen.get(lr_key(args, task, method))
            if entry and method not in AT_LR_OF:
                rows.append(f"| {task} | {method} | {probe_cells(entry)} |")
    return ("Each method's lr: the lowest validation loss (on the validation split) after "
            f"{args.probe_steps} probe steps, seed 0; where the best was the smallest or largest lr tried, "
            "the next half-decade rung was probed too (four times at most; twice before LocFT-BF's facts probe).\n\n" + "\n".join(rows))


def probe_cells(entry: dict) -> str:
    """An lr choice's probes as 'lr loss' by lr, the chosen one in bold."""
    return ", ".join((f"**{lr} {loss:.3f}**" if float(lr) == entry["lr"] else f"{lr} {loss:.3f}")
                     for lr, loss in sorted(entry["validation_loss"].items(), key=lambda kv: float(kv[0])))


def read_record(path: Path) -> dict:
    """A records JSON file, {} where there is none yet."""
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, value)


def record_path(args, run: Path) -> Path:
    return Path(args.records) / f"{run.name}.json"


def run_record(args, run: Path) -> dict:
    """What the figures need of a run evaluated on the test split; written once, kept in the records."""
    path = record_path(args, run)
    if path.is_file():
        return json.loads(path.read_text())
    metadata = json.loads((run / "metadata.json").read_text())
    rss = Path(str(run) + ".rss")
    record = {"evaluation": json.loads((run / "evaluation.json").read_text()),
              "trainable_parameters": metadata["trainable_parameters"],
              "lr": metadata.get("hyperparameters", {}).get("lr"),
              "step_seconds": step_seconds(run) if (run / "log.jsonl").is_file() else None,
              "peak_rss_mib": json.loads(rss.read_text()) / 1024 if rss.is_file() else None}
    if "s3ft_targets" in metadata:
        record["s3ft_targets"] = metadata["s3ft_targets"]
    if (run / "lines.json").is_file():
        record["lines"] = json.loads((run / "lines.json").read_text())["chosen"]
    write_record(path, record)
    return record


def one_run(args, task: str, method: str, seed: int, work: Path, lr: float) -> dict:
    """Train (and evaluate) one run in its own process; -> its record."""
    run = run_folder(args, work, task, method, seed, lr)
    data = work / "tasks" / task
    if record_path(args, run).is_file() or (run / "evaluated-on-test").is_file():
        return run_record(args, run)
    if (run / "metadata.json").is_file():  # trained, not evaluated
        evaluate_on_test(args, run, data)
        return run_record(args, run)
    flags = ["--data", str(data / "train.jsonl"), "--validation-data", str(data / "validation.jsonl"), "--no-evaluate",
             *train_flags(args, method), "--steps", str(args.steps),
             "--seed", str(seed), *lr_flags(args, task, method, lr, work), "--checkpoint-every", str(args.steps // 2),
             "--max-new-tokens", str(args.max_new_tokens), "--output", str(run)]
    if run.exists():
        flags.append("--resume")
    train_process(run, flags)
    evaluate_on_test(args, run, data)
    return run_record(args, run)


def train_process(run: Path, flags: list[str]) -> None:
    """`imprint lm train FLAGS` in a process of its own, its peak RSS (KiB) written to RUN.rss."""
    code = ("import resource, sys, json; from imprint.cli import main; rc = main(sys.argv[1:]); "
            f"open({str(run) + '.rss'!r}, 'w').write(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
            "sys.exit(rc)")
    started = time.time()
    subprocess.run([sys.executable, "-c", code, "lm", "train", *flags], check=True)
    print(f"{run.name}: trained in {time.time() - started:.0f} s", flush=True)


def timing(args, work: Path, device: str) -> str:
    """Each method's step time and peak RSS from a short run of its own (--timing-steps, on the first
    task, nothing else running by the user's word), kept in the records' timing.json; -> the table
    of every method timed so far for this task, steps and batch."""
    path = Path(args.records) / "timing.json"
    timed = read_record(path)
    lrs = read_record(Path(args.records) / "lrs.json")
    task, data = args.tasks[0], work / "tasks" / args.tasks[0]
    rows = ["| method | s/step alone | peak RSS MiB alone | lr | device | date |", "|---|---|---|---|---|---|"]
    for method in (m for m in args.methods if m not in AT_LR_OF):  # a variant steps as its method does
        key = f"{task}/{method}/{args.timing_steps}/{args.batch_size}{'/padding-free' if args.padding_free else ''}"
        if key not in timed and args.timing:
            entry = lrs.get(lr_key(args, task, method))
            lr = entry["lr"] if entry else CANDIDATE_LRS[method][1]
            run = work / "timing" / f"{task}-{method}-n{args.timing_steps}"
            if run.exists():
                shutil.rmtree(run)
            train_process(run, ["--data", str(data / "train.jsonl"), "--no-evaluate", *train_flags(args, method),
                                "--steps", str(args.timing_steps), "--seed", "0", *lr_flags(args, task, method, lr, work),
                                "--checkpoint-every", "0", "--output", str(run)])
            timed[key] = {"step_seconds": step_seconds(run), "lr": lr, "device": device,
                          "peak_rss_mib": json.loads(Path(str(run) + ".rss").read_text()) / 1024,
                          "date": time.strftime("%Y-%m-%d")}
            write_record(path, timed)
        if key in timed:
            t = timed[key]
            rows.append(f"| {method} | {t['step_seconds']:.2f} | {t['peak_rss_mib']:.0f} | {t['lr']:g} | {t['device']} "
                        f"| {t['date']} |")
    if len(rows) == 2:
        return "Step time and peak RSS of each method measured alone: not measured yet (`--timing`, on a quiet machine)."
    return (f"Step time and peak RSS of each method measured alone (`--timing`: {args.timing_steps} steps of "
            f"{args.batch_size} examples of the {task} task, seed 0, the method's chosen lr, one process, nothing "
            "else running); the s/step column above is the pass's own, which other work on the machine may "
            "have slowed.\n\n" + "\n".join(rows))


def evaluate_on_test(args, run: Path, data: Path) -> None:
    """The run's evaluation.json: target on the test split, the control suite, KL drift."""
    subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "evaluate", str(run), "--data", str(data / "test.jsonl"),
                    "--max-new-tokens", str(args.max_new_tokens)], check=True)
    (run / "evaluated-on-test").write_text("")


def lines_run(args, run: Path, data: Path) -> dict:
    """LiNeS on the run, alpha chosen on the run's held-out examples (the validation split), then
    the chosen run measured on the test split; -> its record."""
    out = run.with_name(run.name + "-lines")
    if not (record_path(args, out).is_file() or (out / "evaluated-on-test").is_file()):
        if out.exists():
            shutil.rmtree(out)
        subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "lines", str(run), "--output", str(out),
                        "--alphas", args.alphas, "--max-new-tokens", str(args.max_new_tokens)], check=True)
        evaluate_on_test(args, out, data)
    return run_record(args, out)


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


# the noise floors: a method against itself with the next seed
FLOORS = [("LoRA against LoRA with the next seed", "lora"), ("full fine-tuning against itself with the next seed", "full")]


def claims_table(evaluations: dict, tasks, seeds, claims=CLAIMS, floors=FLOORS) -> list[str]:
    """The noise floors and each claim's paired a - b, for each task and then pooled over the tasks.

    The tasks are read one by one because a method's place differs from task to task (on the first
    two, LT-SFT was mid-field on facts and first on transform): a pooled mean alone would hide that.
    claims: (paper, claim, a, b); floors: (what, method), the method against its next seed."""
    scopes = [[task] for task in tasks] + ([list(tasks)] if len(tasks) > 1 else [])
    rows = ["| paper | claim | a - b | task | target (a - b) | control retention (a - b) | each seed alone: target; control |",
            "|---|---|---|---|---|---|---|"]
    comparisons = [("noise floor", what, method, method, True) for what, method in floors if len(seeds) > 1] + \
        [(paper, claim, a, b, False) for paper, claim, a, b in claims]
    for paper, claim, a, b, next_seed in comparisons:
        first = True
        for scope in scopes:
            difference = paired(evaluations, a, b, scope, seeds[:-1] if next_seed else seeds,
                                seed_b=(lambda s: seeds[seeds.index(s) + 1]) if next_seed else None)
            if difference["target"] is None and difference["control"] is None:
                continue
            name = scope[0] if len(scope) == 1 else "all, pooled"
            prime = "'" if next_seed else ""
            said = f"{paper} | {claim} | {a} - {b}{prime}" if first else " | | "  # the comparison once, its tasks below
            rows.append(f"| {said} | {name} | {fmt_interval(difference['target'])} | {fmt_interval(difference['control'])} "
                        f"| {by_seed(evaluations, a, b, scope, seeds) if not next_seed else '-'} |")
            first = False
    return rows


def glance_table(evaluations: dict, tasks) -> str:
    """Each method's target and control retention per task, the mean over its seeds: the rankings at a
    glance (the per-seed figures are in the table above it; the differences' intervals below)."""
    methods = list(dict.fromkeys(method for _, method, _ in evaluations))
    table = ["| method | " + " | ".join(f"{task}: target | {task}: retention" for task in tasks) + " |",
             "|---|" + "---|---|" * len(tasks)]
    for method in methods:
        out = []
        for task in tasks:
            runs = [e for (t, m, _), e in evaluations.items() if (t, m) == (task, method)]
            kept = [e["control"]["retention"] for e in runs if e["control"]["retention"] is not None]
            out += ["-", "-"] if not runs else [f"{sum(e['target']['accuracy'] for e in runs) / len(runs):.2f}",
                                                f"{sum(kept) / len(kept):.2f}" if kept else "-"]
        table.append(f"| {method} | " + " | ".join(out) + " |")
    return "Mean over the seeds, per task:\n\n" + "\n".join(table)


def by_seed(evaluations: dict, a: str, b: str, tasks, seeds) -> str:
    """The mean a - b of each seed's pair of runs apart: the item intervals hold the items' spread, not
    the runs', so a difference whose sign changes with the seed is not one to trust (the noise floor
    row shows how far two seeds of one method differ)."""
    means = [paired(evaluations, a, b, tasks, [seed]) for seed in seeds]
    def column(key):
        return " ".join("-" if m[key] is None else f"{m[key][0]:+.2f}" for m in means)
    return f"{column('target')}; {column('control')}"


def fmt_interval(entry) -> str:
    if entry is None:
        return "-"
    mean, low, high, n = entry
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] (n {n})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["facts", "transform", "arithmetic"])
    parser.add_argument("--methods", nargs="+", default=list(CANDIDATE_LRS), choices=[*CANDIDATE_LRS, *AT_LR_OF])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--probe-steps", type=int, default=50, help="steps of each lr probe run")
    parser.add_argument("--padding-free", action="store_true", help="train with padding-free batches")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="LiNeS sweep")
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "lm_forgetting"))
    parser.add_argument("--records", default=str(RECORDS), help="where the runs' records and lrs.json are kept (committed)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    parser.add_argument("--timing", action="store_true", help="only time each method alone (see timing()) and "
                        "report; run it with nothing else on the machine")
    parser.add_argument("--timing-steps", type=int, default=20)
    args = parser.parse_args()
    work = Path(args.work)
    os.environ.setdefault("IMPRINT_CACHE", str(work / "cache"))
    for task in args.tasks:
        if not (work / "tasks" / task / "validation.jsonl").is_file():
            subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "tasks", "--output", str(work / "tasks"),
                            "--task", task], check=True)
    evaluations, rows, lrs = {}, [], {}
    if args.timing:
        args.report_only = True  # the pass's table from its records, beside the new timings
    for task in args.tasks:  # method by method, both seeds of one before the next: pairs complete early
        for method in args.methods:
            if args.report_only:
                chosen = read_record(Path(args.records) / "lrs.json")
                if lr_key(args, task, method) not in chosen:
                    continue
            lr = lrs[(task, method)] = choose_lr(args, task, method, work)
            for seed in args.seeds:
                run = run_folder(args, work, task, method, seed, lr)
                if args.report_only and not record_path(args, run).is_file():
                    continue
                record = one_run(args, task, method, seed, work, lr)
                evaluations[(task, method, seed)] = record["evaluation"]
                rows.append((task, method, seed, lr, record["evaluation"], record["trainable_parameters"],
                             record["step_seconds"], record["peak_rss_mib"]))
                lines_out = run.with_name(run.name + "-lines")
                if method in ("lora", "full") and not (args.report_only and not record_path(args, lines_out).is_file()):
                    lines = lines_run(args, run, work / "tasks" / task)
                    evaluations[(task, f"{method}-lines", seed)] = lines["evaluation"]
                    rows.append((task, f"{method}-lines (alpha {lines['lines']['alpha']:g})", seed, lr,
                                 lines["evaluation"], record["trainable_parameters"], None, None))
    import torch

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    timings = timing(args, work, device)
    table = ["| task | method | seed | lr | target | base target | control retention | KL drift | trained parameters "
             "| s/step (in the pass) | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, method, seed, lr, e, params, seconds, rss in rows:
        retention = e["control"]["retention"]
        table.append(f"| {task} | {method} | {seed} | {lr:g} | {e['target']['accuracy']:.3f} | {e['target']['base_accuracy']:.3f} "
                     f"| {'-' if retention is None else f'{retention:.3f}'} | {e['kl_drift']:.4f} | {params:,} "
                     f"| {'-' if seconds is None else f'{seconds:.2f}'} | {'-' if rss is None else f'{rss:.0f}'} |")
    claims = claims_table(evaluations, args.tasks, args.seeds)
    done = [r for r in rows if r[1] in args.methods]
    body = (f"{len(done)} runs finished of the {len(args.tasks) * len(args.methods) * len(args.seeds)} asked. "
            f"`python benchmarks/lm_forgetting.py --tasks {' '.join(args.tasks)} --methods {' '.join(args.methods)} "
            f"--seeds {' '.join(map(str, args.seeds))} --steps {args.steps} --batch-size {args.batch_size}"
            f"{' --padding-free' if args.padding_free else ''} --probe-steps {args.probe_steps}` on {device}; "
            f"SmolLM2-135M-Instruct (embedded); each method's lr chosen per task on validation loss after "
            f"{args.probe_steps} probe steps (the lr column; the probes' losses below; for LT-SFT and LoFiT the "
            f"lr of phase 2, phase 1's in the method's name); "
            f"greedy answers of at most {args.max_new_tokens} tokens; LiNeS swept over alpha {args.alphas}.\n\n"
            + "\n".join(table) + "\n\n" + glance_table(evaluations, args.tasks) + "\n\n" + timings + "\n\n" + probe_table(work, args) + "\n\nPaired differences per item (a held-out example, or a control prompt the base "
            "answers right) over both seeds, for each task and pooled over the tasks, mean and 95% interval; an interval that holds 0 is no difference "
            "seen.\n\n" + "\n".join(claims))
    print(write_section(args.results, "## Language models: what each method learns and forgets (issue 17)", body))


if __name__ == "__main__":
    main()
