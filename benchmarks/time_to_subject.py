"""Time to subject, class images included: `imprint train` against diffusers' train_dreambooth_lora.py.

Both trainers start from nothing but the saved model and the subject's photos and end with a LoRA
file: prior preservation with --num-class-images class images that neither finds on disk (each
run gets an empty class folder), then the same training recipe (the toy world's `lora` row: rank 8,
alpha 8, lr 3e-3 constant, AdamW with weight decay 1e-2, gradient clipping 1.0, 200 steps, batch 4
+ 4 class images, prior weight 1, 64 px, seed 0). The model is the shipped toy-world model, the
subject a toy-world subject, so the runs fit a 2-core CPU and the result can be scored.

How each renders its class images (the difference is part of what is measured):
  script   its own loop: StableDiffusionPipeline at the pipeline's default size (the model's
           64 px), 50 steps of the model's scheduler, guidance 7.5, --sample_batch_size 4, in its
           --prior_generation_precision (default: fp32 on a CPU; --script-bf16 adds a row with bf16)
  imprint  at the training size (64 px), --class-inference-steps (its default, 15) of DPM-Solver++,
           its guidance default, several images per call, in --class-precision (its default auto:
           bf16 on a CPU with AMX, else fp32; --imprint-class-precision auto,fp32 gives a row each)

Wall time is the trainer process's, start to exit. The split into "class images" and "training"
is read from the class folder: the phase ends when the last class image was written (its mtime),
the same rule for both. Each trainer's LoRA is then scored with the toy-world metrics
(imprint's evaluation of the run; the script's file is scored in a copy of imprint's run folder
with its LoRA file swapped in), so a faster run is also seen to have learned the subject.

  python benchmarks/time_to_subject.py --diffusers-script PATH/examples/dreambooth/train_dreambooth_lora.py

Run it with an interpreter that can import torchvision (the script needs it); both trainers run
under that same interpreter. Writes its table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402
from step_time import run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "time_to_subject"
RECIPE = dict(rank=8, lr=3e-3, steps=200, batch_size=4, resolution=64, seed=0)
GUIDANCE = 6.0  # the toy-world evaluation's
EVALUATION = dict(images_per_prompt=2, inference_steps=20)


def timed(cmd: list[str], run: Path, class_dir: Path, env=None) -> dict:
    class_dir.mkdir(parents=True)
    start = time.time()
    wall, rss, code = run_measured(cmd, run.with_suffix(".log"), env)
    if code:
        raise SystemExit(f"{cmd[1]} failed (exit {code}), see {run.with_suffix('.log')}")
    written = [p.stat().st_mtime for p in class_dir.iterdir() if p.suffix in (".png", ".jpg")]
    class_s = max(written) - start if written else 0.0  # the phase ends when the last class image was written
    return {"wall_s": wall, "class_s": class_s, "train_s": wall - class_s, "peak_rss_mib": rss,
            "class_images": len(written)}


def imprint_cmd(args, model: str, photos: Path, subject, run: Path, class_dir: Path, variant: tuple) -> list[str]:
    r, (class_steps, precision) = RECIPE, variant
    return [sys.executable, "-m", "imprint.cli", "train", "--model", model, "--images", str(photos),
            "--class-name", subject.class_name, "--instance-prompt", "a {token} {class_name}",
            "--class-prompt", "a {class_name}", "--method", "lora", "--rank", str(r["rank"]), "--lr", str(r["lr"]),
            "--steps", str(r["steps"]), "--batch-size", str(r["batch_size"]), "--resolution", str(r["resolution"]),
            "--prior-preservation", "--num-class-images", str(args.num_class_images), "--class-images", str(class_dir),
            "--class-inference-steps", str(class_steps), "--class-precision", precision, "--checkpoint-every", "0", "--sample-every", "0", "--no-final-samples", "--seed", str(r["seed"]),
            "--output", str(run)]


def script_cmd(args, model: str, photos: Path, subject, run: Path, class_dir: Path, precision=None) -> list[str]:
    r = RECIPE
    chosen = ["--prior_generation_precision", precision] if precision else []
    return [sys.executable, args.diffusers_script, "--pretrained_model_name_or_path", model,
            "--instance_data_dir", str(photos), "--class_data_dir", str(class_dir),
            "--with_prior_preservation", "--num_class_images", str(args.num_class_images),
            "--instance_prompt", f"a sks {subject.class_name}", "--class_prompt", f"a {subject.class_name}",
            "--resolution", str(r["resolution"]), "--train_batch_size", str(r["batch_size"]), "--rank", str(r["rank"]),
            "--learning_rate", str(r["lr"]), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
            "--max_train_steps", str(r["steps"]), "--checkpointing_steps", "1000000", "--seed", str(r["seed"]),
            "--mixed_precision", "no", "--dataloader_num_workers", "0", "--output_dir", str(run)] + chosen


def score(run: Path, backend, cache: dict) -> dict:
    from imprint.image.evaluate_run import evaluate_run

    metrics = evaluate_run(run, metrics="toyworld", **EVALUATION, guidance_scale=GUIDANCE, backend=backend,
                           baseline_cache=cache)
    return {m: metrics["summary"][m]["mean"] for m in ("fidelity", "alignment", "pres")} | {
        "base_fidelity": metrics["summary"]["base"]["fidelity"]["mean"]}


def script_as_run(imprint_run: Path, script_out: Path, target: Path) -> Path:
    """imprint's run folder with the script's LoRA file in place of imprint's."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in ("metadata.json", "config.json"):
        shutil.copy(imprint_run / name, target / name)
    shutil.copy(script_out / "pytorch_lora_weights.safetensors", target / "pytorch_lora_weights.safetensors")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusers-script", required=True, help="path to examples/dreambooth/train_dreambooth_lora.py")
    parser.add_argument("--num-class-images", type=int, default=200, help="class images each trainer generates")
    parser.add_argument("--subject", default="striped_circle", help="toy-world subject (one the toy LoRA recipe learns)")
    parser.add_argument("--imprint-class-steps", default="15",
                        help="imprint rows: its --class-inference-steps, one row each, e.g. 15,30 (15: its default)")
    parser.add_argument("--imprint-class-precision", default="auto",
                        help="imprint rows: its --class-precision, e.g. auto,fp32 (a row per steps and precision)")
    parser.add_argument("--script-bf16", action="store_true",
                        help="also run the script with --prior_generation_precision bf16")
    parser.add_argument("--steps", type=int, default=RECIPE["steps"], help="training steps (fewer: a smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each trainer (alternating)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    RECIPE["steps"] = args.steps

    import diffusers
    import torch

    from imprint.evaluate.backends import make_backend
    from imprint.toyworld.pretrain import MODEL_DIR
    from imprint.toyworld.subjects import SUBJECTS, write_subject

    subject = next((s for s in SUBJECTS if s.name == args.subject), None)
    if subject is None:
        raise SystemExit(f"--subject {args.subject}: not a toy-world subject; choose from "
                         + ", ".join(s.name for s in SUBJECTS))
    if not Path(args.diffusers_script).is_file():
        raise SystemExit(f"--diffusers-script {args.diffusers_script}: no such file")
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    photos = write_subject(subject, WORK / "subject")
    for extra in photos.iterdir():  # the script reads every entry of the folder as an image
        if extra.is_dir():
            shutil.rmtree(extra)  # the true masks
        elif extra.suffix not in (".png", ".jpg"):
            extra.unlink()
    model = str(MODEL_DIR)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    variants = [(int(n), p) for n in args.imprint_class_steps.split(",") for p in args.imprint_class_precision.split(",")]
    trainers = [("script", script_cmd, None)] + ([("script-bf16", script_cmd, "bf16")] if args.script_bf16 else [])
    trainers += [(f"imprint-{n}-{p}", imprint_cmd, (n, p)) for n, p in variants]
    rows = {name: [] for name, _, _ in trainers}
    for i in range(args.repeats):
        for name, make, steps in trainers:
            run, class_dir = WORK / f"{name}-{i}", WORK / f"{name}-{i}-class"
            print(f"{name} run {i} ...", flush=True)
            r = timed(make(args, model, photos, subject, run, class_dir, steps), run, class_dir, env)
            print(f"  {r['wall_s']:.0f} s (class images {r['class_s']:.0f} s, {r['class_images']} made)", flush=True)
            rows[name].append(r | {"run": run})

    backend, cache = make_backend("toyworld"), {}
    for i in range(args.repeats):
        ours = rows[trainers[-len(variants)][0]][i]["run"]
        for name, _, _ in trainers:
            run = rows[name][i]["run"]
            if name.startswith("script"):  # the script's LoRA file, scored in a copy of imprint's run folder
                run = script_as_run(ours, run, WORK / f"{name}-{i}-scored")
            rows[name][i]["scores"] = score(run, backend, cache)

    print(write_section(args.results, "## Time to subject, class images included (issue 13)",
                        report(args, rows, variants, subject, torch.__version__, diffusers.__version__)))


def report(args, rows: dict, variants: list[tuple], subject, torch_version: str, diffusers_version: str) -> str:
    def mean(name, key, sub=None):
        return statistics.mean(r[sub][key] if sub else r[key] for r in rows[name])

    script_wall = mean("script", "wall_s")
    command = "python benchmarks/time_to_subject.py " + " ".join(sys.argv[1:])
    table = ["| trainer | class images rendered as | class images | training | wall time | vs script | "
             "peak RSS (MiB) | fidelity | alignment | PRES |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    import torch

    from imprint.core.precision import generation_precision
    from imprint.image.prior import BULK_AT_64PX
    from imprint.image.sampling import images_per_call
    from imprint.image.settings import PriorDataSettings

    defaults = PriorDataSettings()
    size = RECIPE["resolution"]
    how = {"script": f"{size} px (the pipeline's default), 50 steps, fp32 (its default on a CPU), guidance 7.5, 4 per call",
           "script-bf16": f"{size} px (the pipeline's default), 50 steps, bf16, guidance 7.5, 4 per call"}
    labels = {"script": "diffusers train_dreambooth_lora.py",
              "script-bf16": "diffusers train_dreambooth_lora.py --prior_generation_precision bf16"}
    labels = {name: label for name, label in labels.items() if name in rows}
    for n, p in variants:
        resolved = generation_precision(p, "no", torch.device("cpu"), "--class-precision")
        precision = f"{p} ({resolved} here)" if p == "auto" else p
        how[f"imprint-{n}-{p}"] = (f"{size} px (the training size), {n} steps" + (" (its default)" if n == defaults.class_inference_steps else "")
                                   + f", {precision}" + (" (its default)" if p == defaults.class_precision else "")
                                   + f", guidance 7.5, {images_per_call(size, at_64px=BULK_AT_64PX)} per call")
        labels[f"imprint-{n}-{p}"] = f"imprint train --class-inference-steps {n} --class-precision {p}"
    for name, label in labels.items():
        table.append(f"| {label} | {how[name]} | {mean(name, 'class_s'):.0f} s | {mean(name, 'train_s'):.0f} s | "
                     f"{mean(name, 'wall_s'):.0f} s | {mean(name, 'wall_s') / script_wall:.2f}x | "
                     f"{mean(name, 'peak_rss_mib'):.0f} | {mean(name, 'fidelity', 'scores'):.3f} | "
                     f"{mean(name, 'alignment', 'scores'):.3f} | {mean(name, 'pres', 'scores'):.3f} |")
    walls = "; ".join(f"{labels[n]} " + ", ".join(f"{r['wall_s']:.0f}" for r in rows[n]) + " s" for n in rows)
    ratios = {(n, p): mean(f"imprint-{n}-{p}", "wall_s") / script_wall for n, p in variants}
    def per_run(n, p):  # each run against the script run of the same round (they alternate)
        return ", ".join(f"{a['wall_s'] / b['wall_s']:.2f}" for a, b in zip(rows[f"imprint-{n}-{p}"], rows["script"]))

    verdict = "; ".join(f"with {n} class-image steps in {p} {ratio:.2f}x ({'met' if ratio <= 0.3 else 'not met'}; "
                        f"round by round {per_run(n, p)})" for (n, p), ratio in ratios.items())
    body = f"""{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, torch {torch_version}, diffusers {diffusers_version}, training in fp32;
the shipped toy-world model, subject `{subject.name}` (class {subject.class_name}), {args.num_class_images} class images generated by
each trainer into an empty folder, then the toy `lora` recipe (rank 8, lr 3e-3 constant, {args.steps} steps,
batch 4 + 4 class images, 64 px, seed 0; AdamW weight decay 1e-2 and clipping 1.0 are both trainers'
defaults). {args.repeats} run(s) of each, alternating; wall times per run: {walls}.
The class-image phase ends at the last class image's mtime. Scores: the toy-world evaluation (25 prompts,
{EVALUATION['images_per_prompt']} images each, {EVALUATION['inference_steps']} steps, guidance {GUIDANCE}); base model's fidelity {mean('script', 'base_fidelity', 'scores'):.3f}.
Command: `{command}`

{chr(10).join(table)}

imprint's wall time against the script's default run (goal: at most 0.3x): {verdict}."""
    return body


if __name__ == "__main__":
    main()
