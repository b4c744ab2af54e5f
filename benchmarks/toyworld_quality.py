"""Toy-world quality bars (issue 4), written to benchmarks/RESULTS.md.

  --part evaluator   the shipped evaluator's accuracy per attribute on fresh renders (bar >= 0.95)
                     and how well its identity embedding tells the held-out subjects apart
  --part base        the shipped base model's alignment on prompts whose shape/colour pair
                     pre-training never showed (bar >= 0.8), beside pairs it did show
  --part methods     personalisation of the held-out subjects: LoRA with prior preservation on
                     every subject (fidelity from the base model's level to >= 80% of
                     real-vs-real, alignment within 0.1 of the base model's), LoRA on the
                     attention projections and the ResNet convolutions, LoRA without prior
                     preservation (PRES higher than with it), full fine-tuning and textual
                     inversion; a method table with mean and 95% interval over subjects,
                     trainable parameters and wall time
  --part lora-sweep  LoRA's fidelity against alignment for a few settings (--sweep) on the first
                     --subjects subjects

Runs are kept under benchmarks/_work/toyworld (a second call skips finished runs).

  python benchmarks/toyworld_quality.py --part methods [--subjects 10] [--others 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402

from imprint.evaluate.metrics import cosine_matrix, mean_interval  # noqa: E402
from imprint.toyworld.evaluator import WEIGHTS, accuracy_on_fresh_renders, load_evaluator, read_images  # noqa: E402
from imprint.toyworld.render import render  # noqa: E402
from imprint.toyworld.subjects import SUBJECTS  # noqa: E402

WORK = Path(__file__).with_name("_work") / "toyworld"
JSON_OUT: Path | None = None
GUIDANCE = 6.0
# every run: 64 px, batch 4, the toy-world prompts; per method its learning rate and steps
COMMON = dict(resolution=64, batch_size=4, num_class_images=20, class_inference_steps=20,
              instance_prompt="a {token} {class_name}", class_prompt="a {class_name}",
              checkpoint_every=0, sample_every=0, final_samples=False, seed=0)
CONFIGS = {
    "lora": dict(method="lora", rank=8, lr=3e-3, steps=200, prior_preservation=True),
    # LoRA also on the ResNet convolutions: the toy UNet has no attention at 16x16, where an emblem's detail is
    "lora-conv": dict(method="lora", rank=8, lr=3e-3, steps=200, prior_preservation=True, lora_targets="attention+conv"),
    "lora-no-prior": dict(method="lora", rank=8, lr=3e-3, steps=200, prior_preservation=False),
    "full": dict(method="full", lr=1e-4, steps=200, prior_preservation=True),
    "textual_inversion": dict(method="textual_inversion", lr=5e-3, steps=200, prior_preservation=False),
}


def part_evaluator(args) -> str:
    start = time.time()
    model = load_evaluator()
    accuracy = accuracy_on_fresh_renders(model, count=args.renders, seed=args.seed)
    embeddings = []
    for subject in SUBJECTS:
        embeddings.append(read_images(model, [render(s, seed) for s, seed in subject.photo_scenes()])["identity"])
    same, other = [], []
    for i, a in enumerate(embeddings):
        sims = cosine_matrix(a, a)
        n = a.shape[0]
        same.append(float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1))))
        other.append(float(torch.stack([cosine_matrix(a, b).mean() for j, b in enumerate(embeddings) if j != i]).mean()))
    rows = "\n".join(f"| {name} | {value:.3f} | {'yes' if value >= 0.95 else 'no'} |" for name, value in accuracy.items())
    body = f"""{time.strftime('%Y-%m-%d')}; weights `{WEIGHTS.name}` ({WEIGHTS.stat().st_size / 2**20:.2f} MiB);
{args.renders} fresh renders (seed {args.seed}); {time.time() - start:.0f} s.
Command: `python benchmarks/toyworld_quality.py --part evaluator --renders {args.renders}`

| attribute | accuracy | >= 0.95 |
| --- | ---: | --- |
{rows}

Identity embedding on the 10 held-out subjects' photos (5 each, never seen in training):
mean cosine between photos of the same subject {sum(same) / len(same):.3f}, to other subjects
{sum(other) / len(other):.3f} (lowest same-subject {min(same):.3f}, highest other {max(other):.3f}).
"""
    return write_section(args.results, "## Toy world: evaluator", body)


def part_base(args) -> str:
    from diffusers import StableDiffusionPipeline

    from imprint.toyworld.pretrain import MODEL_DIR
    from imprint.toyworld.quality import heldout_scenes, prompt_alignment, seen_scenes

    start = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    evaluator = load_evaluator()
    results = {}
    for name, scenes in (("held-out pairs", heldout_scenes(args.scenes, args.seed)),
                         ("seen pairs", seen_scenes(args.scenes, args.seed))):
        r = prompt_alignment(pipe, scenes, evaluator, guidance=GUIDANCE, steps=20, seed=args.seed)
        results[name] = r
        from imprint.image.sampling import save_grid

        save_grid(r["images"][:32], WORK / f"base-{name.split()[0]}.png", cols=8)
    info = json.loads((MODEL_DIR / "pretrain.json").read_text())
    attributes = list(results["seen pairs"]["per_attribute"])
    head = " | ".join(attributes)
    rows = "\n".join(
        f"| {name} | {r['alignment']:.3f} | " + " | ".join(f"{r['per_attribute'][a]:.3f}" for a in attributes) + " |"
        for name, r in results.items())
    held = results["held-out pairs"]["alignment"]
    body = f"""{time.strftime('%Y-%m-%d')}; the shipped model ({sum(info['parameters'].values()) / 1e6:.2f}M parameters,
pre-trained on {info['device']} in {_pretrain_minutes(info):.1f} min by `imprint toyworld pretrain`);
{args.scenes} prompts each, one image per prompt, 20 DPM-Solver steps, guidance {GUIDANCE}; {time.time() - start:.0f} s.
Alignment: share of the attributes a prompt names that the evaluator reads back (as `--metrics toyworld`).
Command: `python benchmarks/toyworld_quality.py --part base --scenes {args.scenes}`

| shape/colour pairs | alignment | {head} |
| --- | ---: | {' | '.join('---:' for _ in attributes)} |
{rows}

Bar (held-out alignment >= 0.8): {'met' if held >= 0.8 else 'NOT met'} ({held:.3f}).
"""
    return write_section(args.results, "## Toy world: base model", body)


def _pretrain_minutes(info: dict) -> float:
    """The model's whole pre-training, a VAE reused from an earlier run of the same VAE recipe included."""
    return (sum(info["seconds"].values()) + info.get("seconds_vae_training", 0)) / 60


def run_one(config: str, subject, cache: dict, backend, settings: dict | None = None) -> dict:
    """Train `config` (a CONFIGS name, or a name for `settings`) on `subject` and evaluate it."""
    from imprint.image.settings import build_config
    from imprint.image.evaluate_run import evaluate_run
    from imprint.toyworld.pretrain import MODEL_DIR
    from imprint.toyworld.subjects import write_subject
    from imprint.image.train import train

    result_file = WORK / "runs" / config / subject.name / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    photos = write_subject(subject, WORK / "subjects" / subject.name)
    run = result_file.parent
    if run.exists():
        import shutil

        shutil.rmtree(run)
    start = time.time()
    train(build_config({}, dict(COMMON, **(settings or CONFIGS[config]), model=str(MODEL_DIR), images=str(photos),
                                class_name=subject.class_name, output=str(run),
                                class_images=str(WORK / "class" / subject.class_name))))
    trained = time.time()
    metrics = evaluate_run(run, metrics="toyworld", images_per_prompt=2, inference_steps=20, guidance_scale=GUIDANCE,
                           backend=backend, baseline_cache=cache)
    metadata = json.loads((run / "metadata.json").read_text())
    out = {"config": config, "subject": subject.name, "device": _device(), "train_s": trained - start, "eval_s": time.time() - trained,
           "trainable_parameters": metadata["trainable_parameters"],
           "run": {m: metrics["summary"][m]["mean"] for m in ("fidelity", "alignment", "pres", "div")},
           "base": {m: metrics["summary"]["base"][m]["mean"] for m in ("fidelity", "alignment", "pres", "div")},
           "real_fidelity": metrics["real_images"]["summary"]["fidelity"]["mean"]}
    result_file.write_text(json.dumps(out, indent=1))
    if JSON_OUT:  # every result so far in one file (a device run sends it back)
        done = json.loads(JSON_OUT.read_text()) if JSON_OUT.exists() else []
        JSON_OUT.write_text(json.dumps(done + [out], indent=1))
    print(json.dumps(out), flush=True)
    return out


def _device() -> str:
    if torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name()} (fp32)"
    import os

    return f"{os.cpu_count()} CPU cores (fp32)"


def _cell(values: list[float]) -> str:
    m = mean_interval(values)
    if m["mean"] is None:
        return "-"
    return f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" if len(values) > 1 else f"{m['mean']:.3f}"


def codec_ceilings(names: list[str]) -> list[float]:
    """Per subject, the fidelity a perfect generator could reach through the shipped model's VAE:
    each photo round-tripped through it, scored against the subject's other photos
    (leave-one-out, as the real-vs-real row)."""
    from diffusers import AutoencoderKL

    from imprint.toyworld.pretrain import MODEL_DIR, vae_round_trip
    from imprint.toyworld.subjects import SUBJECTS_BY_NAME

    vae, evaluator = AutoencoderKL.from_pretrained(MODEL_DIR / "vae"), load_evaluator()
    ceilings = []
    for name in names:
        photos = [render(scene, seed) for scene, seed in SUBJECTS_BY_NAME[name].photo_scenes()]
        sims = cosine_matrix(read_images(evaluator, vae_round_trip(vae, photos))["identity"],
                             read_images(evaluator, photos)["identity"])
        n = len(photos)
        ceilings.append(float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1))))
    return ceilings


def part_methods(args) -> str:
    from imprint.evaluate.backends import make_backend

    results = {name: [] for name in CONFIGS}
    if args.from_json:  # results collected elsewhere (a device run): only the table
        for r in json.loads(Path(args.from_json).read_text()):
            results[r["config"]].append(r)
    else:
        backend = make_backend("toyworld")
        cache: dict = {}
        for config in CONFIGS:  # LoRA on every subject first: the bars need it most
            limit = {"lora": args.subjects, "lora-conv": args.conv, "lora-no-prior": args.no_prior}.get(config, args.others)
            for subject in SUBJECTS[:limit]:
                results[config].append(run_one(config, subject, cache, backend))
    lora = results["lora"]
    base_fid = [r["base"]["fidelity"] for r in lora]
    real = [r["real_fidelity"] for r in lora]
    fid = [r["run"]["fidelity"] for r in lora]
    share = [f / r for f, r in zip(fid, real)]
    ceiling = codec_ceilings([r["subject"] for r in lora])
    align_gap = [r["run"]["alignment"] - r["base"]["alignment"] for r in lora]
    rows = []
    for name, runs in results.items():
        if not runs:
            continue
        rows.append(f"| {name} | {len(runs)} | " + " | ".join(_cell([r['run'][m] for r in runs]) for m in
                                                              ("fidelity", "alignment", "pres", "div"))
                    + f" | {runs[0]['trainable_parameters']:,} | {sum(r['train_s'] for r in runs) / len(runs):.0f} s"
                    f" ({', '.join(sorted({r['device'] for r in runs}))}) |")
    base_row = "| base model (no training) | {} | {} | -  |".format(
        len(lora), " | ".join(_cell([r["base"][m] for r in lora]) for m in ("fidelity", "alignment", "pres", "div")))
    no_prior = {r["subject"]: r for r in results["lora-no-prior"]}
    paired = [(a, no_prior[a["subject"]]) for a in lora if a["subject"] in no_prior]
    pres_on = [a["run"]["pres"] for a, _ in paired]
    pres_off = [b["run"]["pres"] for _, b in paired]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    conv = results["lora-conv"]
    conv_share = [r["run"]["fidelity"] / r["real_fidelity"] for r in conv]
    bars = [
        f"- LoRA fidelity {mean(fid):.3f} vs the base model's {mean(base_fid):.3f}; real-vs-real {mean(real):.3f}: "
        f"{mean(share) * 100:.0f}% of it (bar >= 80%: {'met' if mean(share) >= 0.8 else 'NOT met'}).",
        f"- What the VAE lets through: each subject photo round-tripped through it scores {mean(ceiling):.3f} "
        f"against the other photos ({mean(ceiling) / mean(real) * 100:.0f}% of real-vs-real), the most any "
        f"method can reach with this codec; LoRA reaches {mean(fid) / mean(ceiling) * 100:.0f}% of that.",
        *([f"- LoRA on attention and convolutions: fidelity {mean([r['run']['fidelity'] for r in conv]):.3f}, "
           f"{mean(conv_share) * 100:.0f}% of real-vs-real; alignment minus the base model's "
           f"{mean([r['run']['alignment'] - r['base']['alignment'] for r in conv]):+.3f} ({len(conv)} subjects)."]
          if conv else []),
        f"- LoRA alignment minus the base model's: {mean(align_gap):+.3f} (bar within 0.1: "
        f"{'met' if abs(mean(align_gap)) <= 0.1 else 'NOT met'}).",
        f"- PRES with prior preservation {mean(pres_on):.3f}, without {mean(pres_off):.3f} on the same "
        f"{len(paired)} subjects (bar lower with it: {'met' if mean(pres_on) < mean(pres_off) else 'NOT met'}).",
    ]
    configs = "\n".join(f"- `{name}`: " + ", ".join(f"{k} {v}" for k, v in c.items()) for name, c in CONFIGS.items())
    devices = sorted({r.get("device", "?") for runs in results.values() for r in runs})
    body = f"""{time.strftime('%Y-%m-%d')}; the shipped toy-world model; runs on {', '.join(devices)}. Each run: 64 px, batch 4, 20 class images (prior preservation), then `imprint evaluate
--metrics toyworld` with the 25 toy prompts, 2 images per prompt, 20 steps, guidance {GUIDANCE}; the
interval is the 95% normal interval over subjects. Training time: wall time, class images included.
Command: `python benchmarks/toyworld_quality.py --part methods --subjects {args.subjects} --conv {args.conv} --no-prior {args.no_prior} --others {args.others}`

| method | subjects | fidelity | alignment | PRES | DIV | trainable parameters | training time |
| --- | ---: | --- | --- | --- | --- | ---: | ---: |
{chr(10).join(rows)}
{base_row} - |

{chr(10).join(bars)}

Settings:
{configs}
"""
    return write_section(args.results, "## Toy world: personalisation", body)


def parse_sweep(text: str) -> list[dict]:
    """"lr=3e-3,steps=100;rank=4" -> LoRA settings: CONFIGS["lora"] with each group's changes."""
    sweep = []
    for group in filter(None, (g.strip() for g in text.split(";"))):
        settings = dict(CONFIGS["lora"])
        for item in group.split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            try:
                if key not in ("lr", "steps", "rank", "prior_loss_weight", "num_class_images"):
                    raise ValueError(key)
                settings[key] = float(value) if key in ("lr", "prior_loss_weight") else int(value)
            except ValueError:
                raise SystemExit(f"--sweep {group!r}: write key=value pairs of lr, steps, rank, prior_loss_weight, "
                                 "num_class_images (whole numbers but lr and prior_loss_weight), separated by "
                                 "commas; settings separated by ;") from None
        sweep.append(settings)
    return sweep


def part_lora_sweep(args) -> str:
    """LoRA's fidelity / alignment trade-off over a few settings, on the first --subjects subjects."""
    from imprint.evaluate.backends import make_backend

    sweep = [dict(CONFIGS["lora"])] + parse_sweep(args.sweep)
    backend, cache, rows = make_backend("toyworld"), {}, []
    for settings in sweep:
        changed = {k: v for k, v in settings.items() if CONFIGS["lora"].get(k) != v}
        name = "lora" if not changed else "lora-" + "-".join(f"{k}{v:g}" for k, v in changed.items())
        runs = [run_one(name, subject, cache, backend, settings) for subject in SUBJECTS[:args.subjects]]
        gap = [r["run"]["alignment"] - r["base"]["alignment"] for r in runs]
        rise = [r["run"]["fidelity"] - r["base"]["fidelity"] for r in runs]
        rows.append(f"| {', '.join(f'{k} {v:g}' for k, v in settings.items() if k in ('rank', 'lr', 'steps') or k in changed)} | "
                    f"{_cell([r['run']['fidelity'] for r in runs])} | {_cell(rise)} | "
                    f"{_cell([r['run']['alignment'] for r in runs])} | {_cell(gap)} | "
                    f"{_cell([r['run']['pres'] for r in runs])} | {sum(r['train_s'] for r in runs) / len(runs):.0f} s |")
    base = [r["base"] for r in runs]
    body = f"""{time.strftime('%Y-%m-%d')}; the shipped toy-world model; LoRA with prior preservation as `--part methods`
(the `lora` row's other settings), on the first {args.subjects} subjects; 2 images per prompt, 20 steps, guidance {GUIDANCE};
mean and 95% interval over subjects. Base model on these subjects: fidelity {_cell([b['fidelity'] for b in base])},
alignment {_cell([b['alignment'] for b in base])}.
Command: `python benchmarks/toyworld_quality.py --part lora-sweep --subjects {args.subjects} --sweep "{args.sweep}"`

| settings | fidelity | fidelity rise | alignment | alignment minus base | PRES | training time |
| --- | --- | --- | --- | --- | --- | ---: |
{chr(10).join(rows)}
"""
    return write_section(args.results, "## Toy world: LoRA settings, fidelity against alignment", body)


def main() -> None:
    global WORK, JSON_OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["evaluator", "base", "methods", "lora-sweep"], required=True)
    parser.add_argument("--renders", type=int, default=2000, help="evaluator: fresh renders")
    parser.add_argument("--scenes", type=int, default=128, help="base: prompts per group")
    parser.add_argument("--subjects", type=int, default=10, help="methods: subjects for LoRA")
    parser.add_argument("--conv", type=int, default=10, help="methods: subjects for LoRA on attention and convolutions")
    parser.add_argument("--no-prior", type=int, default=5, help="methods: subjects for LoRA without prior")
    parser.add_argument("--others", type=int, default=3, help="methods: subjects for full and textual inversion")
    parser.add_argument("--sweep", default="lr=3e-3,steps=100;lr=1e-3,steps=200;prior_loss_weight=3;steps=400",
                        help="lora-sweep: LoRA settings to try beside the `lora` row's, e.g. 'lr=1e-3,steps=200;rank=4'")
    parser.add_argument("--steps", type=int, help="methods: override every method's steps (a smoke run)")
    parser.add_argument("--work", default=str(WORK), help="folder for the runs")
    parser.add_argument("--json-out", help="methods: also collect every run's result in this JSON file")
    parser.add_argument("--from-json", help="methods: write the table from results collected in this file")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    WORK = Path(args.work)
    JSON_OUT = Path(args.json_out) if args.json_out else None
    WORK.mkdir(parents=True, exist_ok=True)
    if args.steps:
        for config in CONFIGS.values():
            config["steps"] = args.steps
    parts = {"evaluator": part_evaluator, "base": part_base, "methods": part_methods, "lora-sweep": part_lora_sweep}
    print(parts[args.part](args))


if __name__ == "__main__":
    main()
