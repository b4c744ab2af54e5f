"""`imprint lm ...`: the language-model commands (train, evaluate, generate, lines, tasks, methods,
demo). Thin like cli.py: parse, call, report; the train flags come from the settings dataclasses."""

from __future__ import annotations

import argparse
from pathlib import Path

from imprint.util.errors import ImprintError

TRAIN_EXAMPLE = """  imprint lm train --data facts/train.jsonl --method lora --steps 200 --output runs/facts-lora
  imprint lm train --data facts/train.jsonl --method hft --lr 2e-5 --output runs/facts-hft
  imprint lm train --config run.toml --resume          # continue after a crash or kill

Every flag is also a TOML key (at the top level, or in its section's table).
TOML tables: [run], [examples], [trainer], [evaluation], one per method ([lora], ...) and per
objective with settings ([dpo], [masked-thought], [otr], [s3ft]).
A JSONL record is {"messages": [...]} or {"prompt": ..., "completion": ...}, optionally with
"answer" and "match" (contains | exact | final_number | regex) for evaluation; with --objective dpo,
{"prompt": ..., "chosen": ..., "rejected": ...}.
`imprint lm methods` lists the methods and their settings.
"""


def add_lm_commands(parser: argparse.ArgumentParser) -> None:
    from imprint.cli import _command as _sub
    from imprint.config import add_flags
    from imprint.lm.settings import groups

    sub = parser.add_subparsers(dest="lm_command", required=True)
    # the train flags write their own defaults, as `imprint train`'s
    train = _sub(sub, "train", "teach a causal LM a task from JSONL examples", TRAIN_EXAMPLE,
                 formatter=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", metavar="TOML", help="TOML run file with the same keys as the flags")
    add_flags(train, groups(), special={"resume": {"nargs": "?", "const": "latest", "metavar": "CHECKPOINT"}})

    spin = _sub(sub, "spin", "SPIN: T iterations of --objective spin, each a run folder (OUTPUT/iter-0, ...) that "
                "starts from the one before; rerun the same command to go on after a stop",
                "  imprint lm spin --data facts/train.jsonl --iterations 2 --steps 100 --output runs/facts-spin",
                formatter=argparse.RawDescriptionHelpFormatter)
    spin.add_argument("--iterations", type=int, default=2, help="SPIN iterations, each one run (default: 2)")
    spin.add_argument("--config", metavar="TOML", help="TOML run file with the same keys as the flags")
    add_flags(spin, groups(), special={"resume": {"nargs": "?", "const": "latest", "metavar": "CHECKPOINT"}})

    ev = _sub(sub, "evaluate", "target accuracy and forgetting (control retention, KL drift) of runs against "
              "their base model; one report", "  imprint lm evaluate runs/facts-lora runs/facts-hft --output report.html")
    ev.add_argument("runs", nargs="+", help="run folders made by imprint lm train")
    ev.add_argument("--data", help="JSONL of held-out examples (default: each run's validation split)")
    ev.add_argument("--max-new-tokens", type=int, default=64, help="longest generated answer")
    ev.add_argument("--output", help="write one report of all the runs here (each run also gets its own "
                    "evaluation.json and report.html)")

    gen = _sub(sub, "generate", "answer prompts with a run (or a base model)",
               '  imprint lm generate --run runs/facts-lora "What is the capital of Veloria?"')
    gen.add_argument("prompts", nargs="+", help="user messages, one answer each")
    gen.add_argument("--run", help="run folder made by imprint lm train (or none: --model's base model)")
    gen.add_argument("--model", default=None, help="base model (default: the run's; without --run: smollm2)")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="longest answer")

    li = _sub(sub, "lines", "LiNeS: scale a run's update by depth (shallow blocks toward the base) to recover what "
              "it forgot; alpha swept, the best by 2 x target + control", "  imprint lm lines runs/facts-lora   "
              "# -> runs/facts-lora-lines")
    li.add_argument("run", help="run folder made by imprint lm train")
    li.add_argument("--output", help="run folder of the result (default: RUN-lines)")
    li.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
                    help="comma-separated alphas to sweep (beta = 1 - alpha); 1 (the run itself) must be one")
    li.add_argument("--target-weight", type=float, default=2.0, help="weight of the target against the control "
                    "when choosing alpha (the paper's 2)")
    li.add_argument("--data", help="held-out examples (default: the run's validation split)")
    li.add_argument("--max-new-tokens", type=int, default=64, help="longest generated answer")

    me = _sub(sub, "merge", "merge runs of one base: TIES or task arithmetic, with LiNeS on the merged vector; "
              "or compose them (the plain sum, exact for sparse deltas: lift, ltsft)",
              "  imprint lm merge runs/facts-lora runs/reverse-lora --how ties --output runs/merged")
    me.add_argument("runs", nargs="+", help="run folders of one base model")
    me.add_argument("--output", required=True, help="run folder of the result")
    me.add_argument("--how", choices=("ties", "task_arithmetic", "sum"), default="ties",
                    help="ties: trim, elect sign, disjoint mean; task_arithmetic: the sum, LiNeS-scaled; sum: "
                    "theta_0 + every run's delta, unscaled (composable sparse fine-tuning)")
    me.add_argument("--density", type=float, default=0.2, help="ties: share of each task vector kept")
    me.add_argument("--beta", type=float, help="LiNeS beta (default: chosen on the runs' held-out examples from "
                    "the paper's grid)")
    me.add_argument("--max-new-tokens", type=int, default=64, help="longest generated answer when choosing beta")

    co = _sub(sub, "compose", "compose runs: theta_0 plus every run's delta (composable sparse fine-tuning; "
              "the same as merge --how sum)", "  imprint lm compose runs/facts-ltsft runs/reverse-ltsft --output runs/both")
    co.add_argument("runs", nargs="+", help="run folders of one base model (sparse runs: lift, ltsft)")
    co.add_argument("--output", required=True, help="run folder of the result")

    demo = _sub(sub, "demo", "teach SmolLM2 invented facts with LoRA and with HFT, apply LiNeS to the LoRA run, "
                "print target and control side by side: offline, on the CPU", "  imprint lm demo --output lm-demo")
    demo.add_argument("--output", default="lm-demo", help="folder for the data, runs and report")
    demo.add_argument("--steps", type=int, default=60, help="training steps of each run")

    tasks = _sub(sub, "tasks", "write the shipped tasks (generated by code) as JSONL: DIR/TASK/{train,test,validation}"
                 ".jsonl, and preference pairs (preferences.jsonl, validation-preferences.jsonl) for --objective dpo",
                 "  imprint lm tasks --output lm-tasks --task facts")
    tasks.add_argument("--output", required=True, help="folder for one sub-folder per task")
    tasks.add_argument("--task", action="append", help="only this task (repeatable; default: all)")
    tasks.add_argument("--seed", type=int, default=0, help="seed of the generated examples")

    methods = _sub(sub, "methods", "list the language-model methods and objectives, with their settings",
                   "  imprint lm methods")
    methods.add_argument("--name", help="only this method or objective")


def spin_iterations(toml_values: dict, flag_values: dict, iterations: int) -> list[Path]:
    """`imprint lm spin`: iteration t is a run of --objective spin into OUTPUT/iter-t, --init-from
    iteration t-1 (iteration 0 from --init-from, or the base model). A finished iteration is kept, an
    unfinished one resumed, so the same command goes on after a stop."""
    from imprint.core.run_folder import RunFolder
    from imprint.lm.settings import build_config
    from imprint.lm.train import train

    if iterations <= 0:
        raise ImprintError(f"--iterations must be > 0, got {iterations}")
    values = {**toml_values, **{k: v for k, v in flag_values.items() if v is not None}}
    if values.get("objective", "spin") != "spin":
        raise ImprintError(f"--objective {values['objective']}: imprint lm spin trains --objective spin; drop the flag")
    output = values.get("output")
    if not output:
        raise ImprintError("--output is required (flag or key in --config)")
    runs, previous = [], values.get("init_from")
    for t in range(iterations):
        folder = Path(output) / f"iter-{t}"
        resume = "latest" if RunFolder(folder).is_started() else None
        cfg = build_config({}, {**values, "objective": "spin", "output": str(folder), "init_from": previous,
                                "resume": resume})
        runs.append(train(cfg))
        previous = str(folder)
    return runs


def run_lm_command(args: argparse.Namespace) -> int:
    command = args.lm_command
    if command == "train":
        from imprint.config import all_fields, load_toml
        from imprint.lm.settings import build_config, groups
        from imprint.lm.train import train

        toml_values = load_toml(args.config, groups()) if args.config else {}
        cfg = build_config(toml_values, {k: getattr(args, k) for k in all_fields(groups())})
        print(f"run written to {train(cfg)}")
    elif command == "spin":
        from imprint.config import all_fields, load_toml
        from imprint.lm.settings import groups

        toml_values = load_toml(args.config, groups()) if args.config else {}
        for run in spin_iterations(toml_values, {k: getattr(args, k) for k in all_fields(groups())}, args.iterations):
            print(f"SPIN iteration written to {run}")
    elif command == "evaluate":
        from imprint.lm.evaluate import evaluate_run, summary_line
        from imprint.lm.report import write_report

        if args.max_new_tokens <= 0:
            raise ImprintError(f"--max-new-tokens must be > 0, got {args.max_new_tokens}")
        results = [evaluate_run(run, data=args.data, max_new_tokens=args.max_new_tokens) for run in args.runs]
        for r in results:
            print(f"{Path(r['run']).name:24s} {summary_line(r)}")
        if args.output:
            print(f"report: {write_report(results, Path(args.output))}")
    elif command == "generate":
        from imprint.lm.generate import answer_prompts

        for prompt, answer in zip(args.prompts, answer_prompts(args.run, args.prompts, args.model, args.max_new_tokens)):
            print(f"> {prompt}\n{answer}\n")
    elif command == "tasks":
        from imprint.lm.data import write_jsonl
        from imprint.lm.tasks import TASKS, make_task, preference_records
        from imprint.util.files import make_folder

        for name in args.task or list(TASKS):
            task = make_task(name, args.seed)
            folder = make_folder(Path(args.output) / name, "--output")
            write_jsonl(task.train, folder / "train.jsonl")
            write_jsonl(task.test, folder / "test.jsonl")
            write_jsonl(task.validation, folder / "validation.jsonl")
            write_jsonl(preference_records(name, task.train, args.seed), folder / "preferences.jsonl")
            write_jsonl(preference_records(name, task.validation, args.seed), folder / "validation-preferences.jsonl")
            print(f"{folder}: {len(task.train)} training, {len(task.test)} test, {len(task.validation)} validation "
                  f"examples, and preference pairs of the training and validation ones ({task.description})")
    elif command == "lines":
        from imprint.lm.lines import lines

        try:
            alphas = tuple(float(a) for a in args.alphas.split(","))
        except ValueError as e:
            raise ImprintError(f"--alphas {args.alphas}: give comma-separated numbers such as 0,0.5,1") from e
        print(f"LiNeS result written to {lines(args.run, args.output, alphas, args.target_weight, args.data, args.max_new_tokens)}")
    elif command == "merge":
        from imprint.lm.merge import merge

        print(f"merged run written to {merge(args.runs, args.output, args.how, args.density, args.beta, args.max_new_tokens)}")
    elif command == "compose":
        from imprint.lm.merge import merge

        print(f"composed run written to {merge(args.runs, args.output, 'sum')}")
    elif command == "demo":
        from imprint.lm.demo import run_demo
        from imprint.util.files import make_folder

        if args.steps <= 0:
            raise ImprintError(f"--steps must be > 0, got {args.steps}")
        make_folder(args.output, "--output")
        run_demo(Path(args.output), steps=args.steps)
    elif command == "methods":
        from imprint.cli import describe_methods
        from imprint.lm.objectives import LM_OBJECTIVES
        from imprint.methods import LM_METHODS

        if args.name in LM_OBJECTIVES:
            print(describe_methods(args.name, LM_OBJECTIVES), end="")
        else:
            print(describe_methods(args.name, LM_METHODS), end="")
        if not args.name:
            print("\nobjectives (--objective NAME):\n" + describe_methods(None, LM_OBJECTIVES), end="")
    return 0

