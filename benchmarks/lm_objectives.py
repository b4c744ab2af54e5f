"""The language-model objectives against plain SFT (issue 18), on the embedded SmolLM2.

Every objective trains LoRA (all-linear, r16, the lm_forgetting pass's lr for the task, chosen there on
validation loss) with the same steps, batch and seeds as the SFT run it is paired with, on the same
task; each run is evaluated afterwards on the task's test split and the control suite, as
lm_forgetting.py does (its SFT LoRA runs are reused where they exist). The rows:
- sft: plain SFT (the pass's LoRA run);
- s3ft: S3FT's own / paraphrased / gold targets (the paper: less forgetting at a similar target);
- masked-thought: the paper's 0.4 mask rate (its claim: better accuracy on worked arithmetic);
- otr: One-Token Rollout (its claim: better than SFT, forgetting less);
- dpo: on the task's preference pairs (lm tasks: a wrong answer of the same form rejected), from the
  base model; its lr chosen per task as the forgetting pass chooses one, on the validation pairs' DPO
  loss after --probe-steps (candidates DPO_LRS, the same ladder), unless --dpo-lr is given;
- masked-thought-random, masked-thought-r0.2, s3ft-no-paraphrase, otr-lr3e-4: checks of a result
  against the paper's other settings (random ids for the mask, the MATH rate, S3FT without its
  paraphrase tier) or a lower lr (OTR on facts, whose SFT lr 3e-3 made it collapse; sft-lr3e-4 is
  SFT at that lr, its pair);
- spin-0, spin-1: two SPIN iterations from the SFT run (the paper starts from an SFT model), each
  --steps, at DPO's chosen lr for the task (SPIN's loss is DPO's form; a probe of its own would
  generate the SFT model's answers once per rung) unless --spin-lr is given.
The claims are paired differences per item (held-out example or control prompt) over tasks and seeds
against SFT, with a 95% interval, beside the noise floor (SFT against SFT with the next seed).
Each evaluated run leaves its record in benchmarks/records/lm_objectives/ (committed, as
lm_forgetting.py does), and SFT's figures come from the forgetting pass's record where it has one; a
run with a record is not trained again unless a later SPIN iteration needs its folder.

    python benchmarks/lm_objectives.py --tasks facts arithmetic --seeds 0 1 --steps 150
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from lm_forgetting import RECORDS as FORGETTING_RECORDS  # noqa: E402
from lm_forgetting import claims_table, evaluate_on_test, ladder_search, probe_cells, read_record, run_record  # noqa: E402
from results_file import write_section  # noqa: E402

# DPO's lrs for LoRA: its paper's full fine-tuning lrs (5e-7 to 1e-6) run about 10-100x higher with LoRA,
# as SFT's do (the forgetting pass: LoRA 3e-3 against full 1e-4 on facts)
DPO_LRS = [1e-5, 3e-5, 1e-4]
# checks of a result against the paper's other settings: (the objective, its flags)
VARIANTS = {
    "masked-thought-random": ("masked-thought", ["--mask-with", "random"]),  # the authors' GSM8K script
    "masked-thought-r0.2": ("masked-thought", ["--mask-rate", "0.2"]),  # the paper's rate for MATH
    "s3ft-no-paraphrase": ("s3ft", ["--no-s3ft-paraphrase"]),  # own answers where right, gold otherwise
    "otr-lr3e-4": ("otr", ["--lr", "3e-4"]),  # the later --lr wins; for facts, where 3e-3 collapsed OTR
    "sft-lr3e-4": ("sft", ["--lr", "3e-4"]),  # SFT at that lr, to pair OTR's check at an equal lr
}
OBJECTIVES = ("sft", "s3ft", "masked-thought", "otr", "dpo", "spin-0", "spin-1", *VARIANTS)
CLAIMS = [  # (paper, claim, row, against)
    ("S3FT (arXiv 2502.08130)", "forgets less than SFT at a similar target", "s3ft", "sft"),
    ("Masked Thought (ACL 2024)", "higher accuracy than SFT on reasoning with worked steps", "masked-thought", "sft"),
    ("One-Token Rollout (arXiv 2509.26313)", "better than SFT, with less forgetting", "otr", "sft"),
    ("SPIN (arXiv 2401.01335)", "iteration 0 improves on the SFT model it starts from", "spin-0", "sft"),
    ("SPIN (arXiv 2401.01335)", "iteration 1 improves on iteration 0", "spin-1", "spin-0"),
    ("SPIN (arXiv 2401.01335)", "two iterations improve on the SFT model they start from", "spin-1", "sft"),
    ("DPO (arXiv 2305.18290)", "(on preference pairs from the base, against SFT on the chosen answers)", "dpo", "sft"),
    ("Masked Thought, check", "random ids replace the masked tokens (the authors' GSM8K script)",
     "masked-thought-random", "sft"),
    ("Masked Thought, check", "mask rate 0.2 (the paper's for MATH)", "masked-thought-r0.2", "sft"),
    ("S3FT, check", "without the paraphrase tier: own answers where right, gold otherwise", "s3ft-no-paraphrase", "sft"),
    ("One-Token Rollout, check", "at lr 3e-4, a tenth of facts' SFT lr", "otr-lr3e-4", "sft"),
    ("One-Token Rollout, check", "at lr 3e-4 against SFT at 3e-4", "otr-lr3e-4", "sft-lr3e-4"),
]


def run_folder(work: Path, task: str, objective: str, seed: int, steps: int) -> Path:
    return work / "runs" / f"{task}-{objective}-n{steps}-s{seed}"


def sft_folder(args, task: str, seed: int) -> Path:
    """The forgetting pass's SFT LoRA run of the task and seed (the same settings as this pass's SFT)."""
    return Path(args.forgetting_work) / "runs" / f"{task}-lora-lr{sft_lr(args, task):g}-n{args.steps}-s{seed}"


def sft_lr(args, task: str) -> float:
    path = Path(args.forgetting_records) / "lrs.json"
    chosen = json.loads(path.read_text()) if path.is_file() else {}
    key = f"{task}/lora/{args.probe_steps}/extended"
    if key not in chosen:
        sys.exit(f"{path} has no LoRA lr for {task}; run benchmarks/lm_forgetting.py "
                 f"--tasks {task} --methods lora first")
    return chosen[key]["lr"]


def dpo_lr(args, work: Path, task: str) -> float:
    """--dpo-lr, else the lr of lowest DPO loss on the task's validation pairs after --probe-steps."""
    if args.dpo_lr is not None:
        return args.dpo_lr
    data = work / "tasks" / task

    def train_probe(lr: float, run: Path) -> None:
        subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "train", "--method", "lora", "--objective", "dpo",
                        "--data", str(data / "preferences.jsonl"), "--validation-data",
                        str(data / "validation-preferences.jsonl"), "--batch-size", str(args.batch_size), "--lr", str(lr),
                        "--steps", str(args.probe_steps), "--seed", "0", "--checkpoint-every", "0", "--no-evaluate",
                        "--output", str(run), *(["--model", args.model] if args.model else [])], check=True)

    return ladder_search(Path(args.records) / "lrs.json", f"{task}/dpo/{args.probe_steps}", f"{task} dpo", DPO_LRS,
                         work / "probe", lambda lr: f"{task}-dpo-lr{lr:g}-n{args.probe_steps}", train_probe)


def spin_lr(args, work: Path, task: str) -> float:
    return args.spin_lr if args.spin_lr is not None else dpo_lr(args, work, task)


def train(args, run: Path, flags: list[str], data: Path) -> Path:
    """One `imprint lm train` in its own process (resumed if it was stopped), then the test evaluation."""
    if (run / "evaluated-on-test").is_file():
        return run
    if not (run / "metadata.json").is_file():
        started = time.time()
        subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "train", "--batch-size", str(args.batch_size),
                        "--steps", str(args.steps), "--checkpoint-every", str(args.steps // 2), "--no-evaluate",
                        "--max-new-tokens", str(args.max_new_tokens), "--output", str(run), *flags,
                        *(["--resume"] if run.exists() else [])], check=True)
        print(f"{run.name}: trained in {time.time() - started:.0f} s", flush=True)
    evaluate_on_test(args, run, data)
    return run


def one(args, work: Path, task: str, objective: str, seed: int) -> Path:
    data = work / "tasks" / task
    lr = sft_lr(args, task)
    common = ["--seed", str(seed), "--method", "lora", *(["--model", args.model] if args.model else [])]
    sft = sft_folder(args, task, seed)
    if objective == "sft":
        if (sft / "evaluated-on-test").is_file():  # the forgetting pass's run: the same settings
            return sft
        sft = run_folder(work, task, "sft", seed, args.steps)
        return train(args, sft, [*common, "--lr", str(lr), "--data", str(data / "train.jsonl"),
                                 "--validation-data", str(data / "validation.jsonl")], data)
    run = run_folder(work, task, objective, seed, args.steps)
    sft_data = ["--data", str(data / "train.jsonl"), "--validation-data", str(data / "validation.jsonl")]
    if objective in ("s3ft", "masked-thought", "otr") or objective in VARIANTS:
        base, flags = VARIANTS.get(objective, (objective, []))
        return train(args, run, [*common, "--lr", str(lr), *sft_data, "--objective", base, *flags], data)
    if objective == "dpo":
        return train(args, run, [*common, "--lr", str(dpo_lr(args, work, task)), "--objective", "dpo", "--data",
                                 str(data / "preferences.jsonl"), "--validation-data",
                                 str(data / "validation-preferences.jsonl")], data)
    iteration = int(objective.split("-")[1])
    start = one(args, work, task, "sft" if iteration == 0 else f"spin-{iteration - 1}", seed)
    return train(args, run, [*common, "--lr", str(spin_lr(args, work, task)), *sft_data, "--objective", "spin",
                             "--init-from", str(start), "--spin-max-new-tokens", str(args.max_new_tokens)], data)


def record(args, work: Path, task: str, objective: str, seed: int) -> dict | None:
    """The run's record (trained and evaluated first unless --report-only); None where there is none."""
    if objective == "sft":
        lr = sft_lr(args, task)
        name = f"{task}-lora-lr{lr:g}-n{args.steps}-s{seed}.json"
        if (Path(args.forgetting_records) / name).is_file():  # the forgetting pass's run: the same settings
            entry = json.loads((Path(args.forgetting_records) / name).read_text())
            return {**entry, "lr": entry.get("lr") or lr}  # its early records did not keep the lr
    path = Path(args.records) / f"{run_folder(work, task, objective, seed, args.steps).name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if args.report_only:
        return None
    return run_record(args, one(args, work, task, objective, seed))


def lr_text(args) -> str:
    """How DPO's and SPIN's lrs were set, with the DPO probes' losses."""
    chosen = read_record(Path(args.records) / "lrs.json")
    probes = [f"{task} {probe_cells(entry)}" for task in args.tasks
              if (entry := chosen.get(f"{task}/dpo/{args.probe_steps}"))]
    dpo = (f"DPO lr {args.dpo_lr:g} (given)" if args.dpo_lr is not None else
           f"DPO's lr per task: the lowest DPO loss on the validation pairs after {args.probe_steps} probe steps "
           f"({'; '.join(probes) or 'no probe yet'})")
    return dpo + (f"; SPIN lr {args.spin_lr:g} (given)" if args.spin_lr is not None else "; SPIN at DPO's lr")


def two(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["facts", "arithmetic"])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--probe-steps", type=int, default=40, help="steps of each DPO lr probe; also the forgetting "
                        "pass's probe length (the key of its LoRA lr)")
    parser.add_argument("--dpo-lr", type=float, help="DPO's lr (default: chosen per task on the validation pairs)")
    parser.add_argument("--spin-lr", type=float, help="SPIN's lr (default: DPO's for the task)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", help="another causal LM than the embedded SmolLM2 (a smoke run)")
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "lm_objectives"))
    parser.add_argument("--forgetting-work", default=str(REPO / "benchmarks" / "_work" / "lm_forgetting"))
    parser.add_argument("--forgetting-records", default=str(FORGETTING_RECORDS),
                        help="the forgetting pass's records: its lrs.json and SFT runs")
    parser.add_argument("--records", default=str(REPO / "benchmarks" / "records" / "lm_objectives"),
                        help="where this benchmark's run records are kept (committed)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    args = parser.parse_args()
    work = Path(args.work)
    os.environ.setdefault("IMPRINT_CACHE", str(Path(args.forgetting_work) / "cache"))
    for task in args.tasks:
        if not (work / "tasks" / task / "validation-preferences.jsonl").is_file():
            subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "tasks", "--output", str(work / "tasks"),
                            "--task", task], check=True)
    evaluations, rows = {}, []
    for task in args.tasks:
        for objective in args.objectives:
            for seed in args.seeds:
                entry = record(args, work, task, objective, seed)
                if entry is None:
                    continue
                e = entry["evaluation"]
                evaluations[(task, objective, seed)] = e
                extra = ", ".join(f"{k} {v}" for k, v in entry.get("s3ft_targets", {}).items())
                rows.append(f"| {task} | {objective} | {seed} | {entry['lr']:g} | "
                            f"{e['target']['accuracy']:.2f} | {e['target']['base_accuracy']:.2f} | "
                            f"{two(e['control']['retention'])} | {e['kl_drift']:.3f} | {two(entry['step_seconds'])} | "
                            f"{extra} |")
    table = ["| task | objective | seed | lr | target | base target | control retention | KL drift | s/step | notes |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows]
    claims = claims_table(evaluations, args.tasks, args.seeds, CLAIMS, [("SFT against SFT with the next seed", "sft")])
    body = (f"SmolLM2-135M-Instruct, LoRA r16 all-linear, {args.steps} steps of {args.batch_size} examples, seeds "
            f"{', '.join(map(str, args.seeds))}; SFT's lr per task from the lm_forgetting pass; {lr_text(args)}. Target on the test split, greedy, {args.max_new_tokens} new "
            "tokens.\n\n" + "\n".join(table) + "\n\nPaired differences per item (1 right, 0 wrong) over the seeds, per task "
            "and pooled over the tasks, mean and 95% interval; an interval that holds 0 is no difference seen; the "
            "last column is each seed's pair of runs alone (a sign that changes with the seed is not to be trusted).\n\n" + "\n".join(claims))
    print(write_section(args.results, "## Language models: objectives against SFT (issue 18)", body))


if __name__ == "__main__":
    main()
