"""Toy-world pre-training recipes side by side: which denoiser recipe draws what a prompt asks.

Each variant is `imprint toyworld pretrain`'s recipe with some fields changed; every one reuses
one trained VAE (the shipped model's by default, so only the denoiser is trained) and is then
scored as `--part base` of toyworld_quality.py scores the shipped model: alignment on prompts
whose shape/colour pair pre-training never showed, and on pairs it did show. Variants run as
parallel processes (on a GPU they share it), each writing NAME.json, NAME.png and NAME.log
into --out; a variant already there is not run again. The collected table goes to
--out/recipes.json and, with --results, to a section of benchmarks/RESULTS.md.

  python benchmarks/toyworld_recipes.py --variants eps,eps-offset --device cuda --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402

from imprint.toyworld.pretrain import MODEL_DIR, PretrainRecipe  # noqa: E402

GUIDANCE = 6.0
# overrides of PretrainRecipe's defaults, which are the shipped (v-prediction) recipe
EPS = dict(prediction_type="epsilon", zero_terminal_snr=False, standardise_latents=False)  # the first shipped recipe's
VARIANTS = {
    "eps": EPS,
    "eps-offset": dict(EPS, offset_noise=0.1),
    "eps-attn16": dict(EPS, top_attention=True),
    "v-snr": {},  # the shipped recipe
    "v-snr1": dict(v_loss_weight="snr_plus_one"),  # RESULTS.md's "second pre-training recipe"
    "eps-b128": dict(EPS, batch_size=128),
    "v-snr-b128": dict(batch_size=128),
    "eps-offset-attn16": dict(EPS, offset_noise=0.1, top_attention=True),
}


def run_one(name: str, out: Path, device: str, steps: int | None, dataset_size: int | None, scenes: int,
            seed: int) -> dict:
    import torch
    from diffusers import StableDiffusionPipeline

    from imprint.toyworld.evaluator import load_evaluator
    from imprint.toyworld.pretrain import pretrain
    from imprint.toyworld.quality import heldout_scenes, prompt_alignment, seen_scenes
    from imprint.image.sampling import save_grid

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    overrides = dict(VARIANTS[name])
    if steps:
        overrides["unet_steps"] = steps
    if dataset_size:  # a smoke run
        overrides["dataset_size"] = dataset_size
    recipe = PretrainRecipe(**overrides)
    model = out / "models" / name
    start = time.time()
    summary = pretrain(model, recipe, device=device, reuse_vae=MODEL_DIR / "vae")
    pipe = StableDiffusionPipeline.from_pretrained(model).to(device)
    pipe.set_progress_bar_config(disable=True)
    evaluator = load_evaluator()
    result = {"variant": name, "overrides": overrides, "recipe": asdict(recipe), "device": summary["device"], "seconds": summary["seconds"],
              "denoiser_loss_last500": summary["denoiser_loss_last500"], "parameters": summary["parameters"]}
    for group, chosen in (("held-out", heldout_scenes(scenes, seed)), ("seen", seen_scenes(scenes, seed))):
        r = prompt_alignment(pipe, chosen, evaluator, guidance=GUIDANCE, steps=20, seed=seed)
        result[group] = {"alignment": r["alignment"], "per_attribute": r["per_attribute"]}
        if group == "held-out":
            save_grid(r["images"][:32], out / f"{name}.png", cols=8)
    result["total_s"] = time.time() - start
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict]) -> str:
    attributes = list(results[0]["held-out"]["per_attribute"])
    lines = [f"| variant | recipe changes | denoiser steps x batch | pairs | alignment | {' | '.join(attributes)} | denoiser time |",
             "| --- | --- | --- | --- | ---: | " + " | ".join("---:" for _ in attributes) + " | ---: |"]
    for r in results:
        # results written before "recipe" was recorded: their overrides were of the first, epsilon defaults
        recipe = r.get("recipe") or {**asdict(PretrainRecipe()), "unet_steps": 4000, **r["overrides"]}
        changes = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()
                            if k not in ("unet_steps", "batch_size", "dataset_size")) or "the defaults of its day"
        for group in ("held-out", "seen"):
            g = r[group]
            lines.append(f"| {r['variant']} | {changes} | {recipe['unet_steps']} x {recipe['batch_size']} | {group} | "
                         f"{g['alignment']:.3f} | " + " | ".join(f"{g['per_attribute'][a]:.2f}" for a in attributes)
                         + f" | {r['seconds']['denoiser_s'] / 60:.1f} min ({r['device']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", default=str(Path(__file__).with_name("_work") / "toyworld" / "recipes"))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if there is one)")
    parser.add_argument("--steps", type=int, help="denoiser steps of every variant (default: the recipe's)")
    parser.add_argument("--dataset-size", type=int, help="scenes rendered for the denoiser (a smoke run)")
    parser.add_argument("--scenes", type=int, default=64, help="prompts per group of pairs")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--parallel", type=int, default=8, help="variants trained at once")
    parser.add_argument("--deadline", type=float, default=0, help="seconds; stop variants still running then")
    parser.add_argument("--results", help="write the table as a section of this RESULTS.md")
    parser.add_argument("--heading", default="## Toy world: pre-training recipes", help="the RESULTS.md section")
    parser.add_argument("--from-json", help="write the table of results collected in this recipes.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: run this variant
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        run_one(args.one, out, args.device, args.steps, args.dataset_size, args.scenes, args.seed)
        return
    if args.from_json:  # results collected elsewhere (a GPU machine): write their table
        write_table(json.loads(Path(args.from_json).read_text()), args)
        return
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    start, running, waiting = time.time(), {}, [n for n in names if not (out / f"{n}.json").exists()]
    child = [sys.executable, __file__, "--out", str(out), "--scenes", str(args.scenes), "--seed", str(args.seed)]
    child += (["--device", args.device] if args.device else []) + (["--steps", str(args.steps)] if args.steps else [])
    child += ["--dataset-size", str(args.dataset_size)] if args.dataset_size else []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "PYTHONUNBUFFERED": "1"}
    while waiting or running:
        while waiting and len(running) < args.parallel:
            name = waiting.pop(0)
            with open(out / f"{name}.log", "w") as log:
                running[name] = subprocess.Popen(child + ["--one", name], stdout=log, stderr=subprocess.STDOUT, env=env)
        for name, process in list(running.items()):
            if process.poll() is not None:
                del running[name]
                print(f"{name}: exit {process.returncode} after {time.time() - start:.0f} s", flush=True)
        if args.deadline and time.time() - start > args.deadline:
            for name, process in running.items():
                process.kill()
                print(f"{name}: stopped at the deadline", flush=True)
            break
        time.sleep(2)
    results = [json.loads((out / f"{n}.json").read_text()) for n in names if (out / f"{n}.json").exists()]
    (out / "recipes.json").write_text(json.dumps(results, indent=2))
    if not results:
        sys.exit("no variant finished")
    write_table(results, args)


def write_table(results: list[dict], args) -> None:
    text = table(results)
    print(text)
    if args.results:
        names = ",".join(r["variant"] for r in results)
        body = f"""{time.strftime('%Y-%m-%d')}; each variant: `imprint toyworld pretrain`'s recipe with the changes shown, the
shipped model's VAE reused (only the denoiser trained); alignment as `--part base` ({args.scenes} prompts per group,
20 DPM-Solver steps, guidance {GUIDANCE}).
Command: `python benchmarks/toyworld_recipes.py --variants {names}{' --steps ' + str(args.steps) if args.steps else ''}`

{text}
"""
        write_section(args.results, args.heading, body)


if __name__ == "__main__":
    main()
