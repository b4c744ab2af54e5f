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
  --part adapters    the other adapters (DoRA, LoHa, LoKr, DiffuseKronA, Transformed LoRA, pivotal
                     tuning) and training options (min-SNR, offset noise, EMA, Prodigy) against the
                     `lora` recipe at the same budget: paired differences to LoRA with the same
                     subject and training seed, beside the noise floor (LoRA seed 1 minus seed 0),
                     and a verdict on each paper's claim (issue 13)

Runs are kept under benchmarks/_work/toyworld (a second call skips finished runs, so a part can
be stopped and continued later; a smoke run with --steps / --eval-images / --eval-steps keeps its
runs in a folder of its own).

  python benchmarks/toyworld_quality.py --part methods [--subjects 10] [--others 3]
  python benchmarks/toyworld_quality.py --part adapters [--subjects 10] [--seeds 0,1] [--configs lora,krona]
  python benchmarks/toyworld_quality.py --part objectives [--subjects 10] [--seeds 0,1] [--configs mask,spl]
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
import json
import logging
import math
import statistics
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
# class images in float32, as every recorded table's runs made them (before --class-precision's auto)
COMMON = dict(resolution=64, batch_size=4, num_class_images=20, class_inference_steps=20, class_precision="fp32",
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
# how every run is evaluated (--eval-images / --eval-steps shrink it for a smoke run)
EVALUATION = dict(images_per_prompt=2, inference_steps=20)


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


def _result_file(config: str, subject_name: str) -> Path:
    """Where a finished run of `config` on a subject keeps its result."""
    return WORK / "runs" / config / subject_name / "result.json"


def run_one(config: str, subject, cache: dict, backend, settings: dict | None = None) -> dict:
    """Train `config` (a CONFIGS name, or a run name for `settings`) on `subject` and evaluate it;
    a finished run (its result.json) is read back instead."""
    from imprint.image.settings import build_config
    from imprint.image.evaluate_run import evaluate_run
    from imprint.toyworld.pretrain import MODEL_DIR
    from imprint.toyworld.subjects import write_domain, write_subject
    from imprint.image.train import train

    result_file = _result_file(config, subject.name)
    if result_file.exists():
        return json.loads(result_file.read_text())
    values = dict(COMMON, **(settings or CONFIGS[config]))
    if values.pop("domain", False):  # the subject's domain set (its emblem on every colour), not its photos
        photos = write_domain(subject, WORK / "domains" / subject.name)
    else:
        photos = write_subject(subject, WORK / "subjects" / subject.name)
    run = result_file.parent
    if run.exists():
        import shutil

        shutil.rmtree(run)
    start = time.time()
    if values.get("masks") is True:  # the subject's true masks, written beside its photos
        values["masks"] = str(photos / "masks")
    train(build_config({}, dict(values, model=str(MODEL_DIR), images=str(photos), class_name=subject.class_name,
                                output=str(run), class_images=str(_class_folder(subject.class_name, values["seed"],
                                                                                values["class_precision"])))))
    trained = time.time()
    metrics = evaluate_run(run, metrics="toyworld", **EVALUATION, guidance_scale=GUIDANCE,
                           backend=backend, baseline_cache=cache)
    metadata = json.loads((run / "metadata.json").read_text())
    out = {"config": config, "subject": subject.name, "seed": values["seed"], "device": _device(),
           "train_s": trained - start, "eval_s": time.time() - trained,
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


def _class_folder(class_name: str, seed: int, precision: str = "fp32") -> Path:
    """The class images of one training seed (the core makes them with the run's seed): a folder per
    seed, so that two shards on two seeds neither regenerate one folder in turn nor read it while the
    other rewrites it (before this, runs at seeds 1-3 shared one folder: a run could have trained on
    a mix of two seeds' class images, the same prompt and model, which is noise but not bias); and
    a folder per precision other than fp32."""
    name = class_name if seed == 0 else f"{class_name}-seed{seed}"
    return WORK / "class" / (name if precision == "fp32" else f"{name}-{precision}")


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


# --part adapters (issue 13): the `lora` recipe (rank 8, lr 3e-3, 200 steps, prior preservation,
# COMMON) with one thing changed, so every row has LoRA's budget: steps, batch, class images.
ADAPTER_CHANGES = {
    "lora": {},
    "dora": dict(method="dora"),
    "loha": dict(method="loha"),
    "lokr": dict(method="lokr"),
    "krona": dict(method="krona", krona_a1=4, krona_a2=64),  # the paper's best factor shape
    "tlora": dict(method="tlora"),  # its default ring ranks (2, 6), the paper's smallest "TLoRA(2,6)"
    # LoRA as the lora row; the token's embedding at the toy textual_inversion row's lr
    "pivotal": dict(method="pivotal", embedding_lr=CONFIGS["textual_inversion"]["lr"]),
    "snr": dict(snr_gamma=5.0),  # the min-SNR paper's gamma
    "noise-offset": dict(noise_offset=0.05),
    # 0.99 averages over about 100 steps, half the run; the usual 0.999 would span 1,000, five runs.
    # The core's EMA warm-up caps the decay at (1 + step) / (10 + step) (0.957 at step 200), so at
    # 200 steps every decay >= 0.96 gives the same average (see _ema_span in the report)
    "ema": dict(ema_decay=0.99),
    "prodigy": dict(optimizer="prodigy", lr=1.0),  # Prodigy estimates the step size; lr is its multiplier
    # the two seed papers' adapters at another lr, to tell a recipe effect from the method's own:
    # krona at LoRA's lr (its 5x lost alignment), tlora at 3.3x (it learned less than LoRA)
    "krona-lr3e-3": dict(method="krona", krona_a1=4, krona_a2=64, lr=3e-3),
    "tlora-lr1e-2": dict(method="tlora", lr=1e-2),
    # the class images under bf16 autocast (what --class-precision auto renders on a CPU with AMX)
    "class-bf16": dict(class_precision="bf16"),
}
# the rows whose claims the noise floor could not settle at 2 seeds run at RAISED_SEEDS as well
RAISED_CONFIGS = ("lora", "krona", "tlora")
# why a row's settings are what they are, in the report
ADAPTER_NOTES = {
    "krona": "the paper's best (a1, a2)", "tlora": "its default ring ranks, the paper's smallest TLoRA(2,6)",
    "pivotal": "embedding lr: the toy textual_inversion row's", "snr": "the min-SNR paper's gamma",
    "noise-offset": "the README's example (Guttenberg's post used 0.1)", "ema": "see below",
    "prodigy": "lr is the multiplier of Prodigy's own step-size estimate: 1.0, its README's",
    "krona-lr3e-3": "krona at LoRA's lr", "tlora-lr1e-2": "tlora at 3.3x LoRA's lr",
    "class-bf16": "the class images in bf16 (--class-precision auto on an AMX CPU), the rest as lora",
}
METRICS = ("fidelity", "alignment", "pres", "div")
NAMES = {"fidelity": "fidelity", "alignment": "alignment", "pres": "PRES", "div": "DIV"}


def adapter_settings(name: str, changes: dict | None = None) -> tuple[dict | None, str]:
    """The run settings of an ADAPTER_CHANGES row and how its lr was chosen; None where its
    method is not in METHODS (yet). An adapter's lr: the toy LoRA lr times the ratio of the
    method's default lr to LoRA's (krona 5e-4 / 1e-4: 5x), the paper-scale gap carried over."""
    from imprint.methods import METHODS

    changes = ADAPTER_CHANGES if changes is None else changes
    settings = dict(CONFIGS["lora"], **changes[name])
    method = settings["method"]
    if method not in METHODS:
        return None, f"method `{method}` is not in imprint.methods.METHODS yet"
    fields = {f.name for f in dataclasses.fields(METHODS[method].Settings)}
    if "rank" not in fields:  # krona, tlora: their size is their own settings
        settings.pop("rank")
    if "lr" in changes[name]:
        return settings, f"lr {settings['lr']:g} (set)"
    if method == "lora":
        return settings, f"lr {settings['lr']:g} (the recipe's)"
    ratio = METHODS[method].default_lr / METHODS["lora"].default_lr
    settings["lr"] = CONFIGS["lora"]["lr"] * ratio
    return settings, f"lr {settings['lr']:g} = {CONFIGS['lora']['lr']:g} x {ratio:g} (default lr {METHODS[method].default_lr:g} / LoRA's)"


def _lora_default_lr() -> float:
    from imprint.methods import METHODS

    return METHODS["lora"].default_lr


def _run_name(config: str, seed: int) -> str:
    """Seed 0 keeps the config's name, so `lora` seed 0 is --part methods' `lora` run."""
    return config if seed == 0 else f"{config}-seed{seed}"


def _ema_span(decay: float, steps: int) -> tuple[float, float]:
    """The step the shipped average is centred on and the share of it from the last quarter of
    the steps, with the core's warm-up (decay min(d, (1 + step) / (10 + step)), step from 0)."""
    weights, keep = [], 1.0
    for done in range(steps, 0, -1):  # from the last update back; update `done` is at step done - 1
        d = min(decay, done / (9 + done))
        weights.append((done, keep * (1 - d)))
        keep *= d
    total = sum(w for _, w in weights)
    centre = sum(s * w for s, w in weights) / total
    return centre, sum(w for s, w in weights if s > steps * 3 // 4) / total


def _interval(values: list[float]) -> dict:
    m = mean_interval(values)
    m["sd"] = (math.sqrt(sum((v - m["mean"]) ** 2 for v in values) / (len(values) - 1))
               if len(values) > 1 else None)
    return m


def _diff_cell(values: list[float]) -> str:
    m = mean_interval(values)
    if m["mean"] is None:
        return "-"
    return f"{m['mean']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]" if len(values) > 1 else f"{m['mean']:+.3f} (1 pair)"


def _pairs_for(sd: float, half_width: float) -> int:
    """Pairs whose 95% interval would be +-half_width at this standard deviation of a pair."""
    return math.ceil((1.96 * sd / half_width) ** 2)


def _seen(values: list[float], lower_is_better: bool = False) -> str:
    """better / worse / no difference seen (the interval includes 0) / too few pairs."""
    m = mean_interval(values)
    if m["n"] < 2:
        return "too few pairs"
    if m["low"] > 0:
        return "worse" if lower_is_better else "better"
    if m["high"] < 0:
        return "better" if lower_is_better else "worse"
    return "no difference seen"


def _budget(values: list[float], noise: list[float], metric: str) -> str:
    """What an interval that holds 0 says, and the pairs a +-0.02 interval (or one as narrow as
    the difference seen) would need, from this row's pairs and from the noise floor's."""
    m, floor = _interval(values), _interval(noise)
    half = (m["high"] - m["low"]) / 2
    parts = [f"the {NAMES[metric]} interval (+-{half:.3f}) is wider than the difference ({m['mean']:+.3f})"]
    sds = [("these pairs'", m["sd"])] + ([("the noise floor's", floor["sd"])] if floor["sd"] else [])
    need = "; ".join(f"+-0.02 needs about {_pairs_for(sd, 0.02)} pairs at {who} standard deviation {sd:.3f}"
                     for who, sd in sds if sd)
    if abs(m["mean"]) > 1e-9 and m["sd"]:
        need += f"; an interval of +-{abs(m['mean']):.3f}, enough to see this difference, about {_pairs_for(m['sd'], abs(m['mean']))} pairs"
    return ", ".join(parts) + (f" ({need})" if need else "")


def part_adapters(args) -> str:
    return _paired_part(args, ADAPTERS)


def _paired_part(args, spec: "PairedPart") -> str:
    """A table of rows, each its base row (LoRA, or the row spec.bases names) with one thing
    changed, as paired differences beside LoRA's noise floor; finished runs are read back."""
    from imprint.evaluate.backends import make_backend

    configs = args.configs.split(",") if args.configs else list(spec.changes)
    unknown = [c for c in configs if c not in spec.changes]
    if unknown:
        raise SystemExit(f"--configs {','.join(unknown)}: unknown; choose from {','.join(spec.changes)}")
    # every row is a difference to its base: LoRA (the noise floor too) and the bases of the rows asked for
    for base in ["lora", *dict.fromkeys(spec.bases[c] for c in configs if c in spec.bases)]:
        if base not in configs:
            configs.insert(0 if base == "lora" else 1, base)
    seeds = [int(s) for s in args.seeds.split(",")]
    raised = [int(s) for s in args.raised_seeds.split(",") if s.strip()]

    def seeds_of(name: str) -> list[int]:
        return seeds + [s for s in raised if s not in seeds] if name in spec.raised else seeds

    all_seeds = seeds + [s for s in raised if s not in seeds]
    subjects = SUBJECTS[:args.subjects]
    if args.shard:  # this process trains every N-th subject; the report reads every finished run
        k, n = args.shard
        subjects = [s for i, s in enumerate(subjects) if i % n == k]
    settings, rules, skipped = {}, {}, {}
    for name in configs:
        settings[name], rules[name] = adapter_settings(name, spec.changes)
        if settings[name] is None:
            skipped[name] = rules[name]
    runnable = [c for c in configs if c not in skipped]
    results: dict[tuple[str, int], dict[str, dict]] = {(c, seed): {} for c in runnable for seed in seeds_of(c)}
    if args.from_json:  # results collected elsewhere (a device run): only the report
        for r in json.loads(Path(args.from_json).read_text()):
            seed = r.get("seed", 0)
            name = r["config"].removesuffix(f"-seed{seed}")
            if (name, seed) in results:
                results[name, seed][r["subject"]] = r
    else:
        backend, cache = make_backend("toyworld"), {}
        # subject by subject, every config and seed: stopped at any point, the rows stay balanced
        for subject in subjects:
            for seed in all_seeds:
                for name in (n for n in runnable if seed in seeds_of(n)):
                    results[name, seed][subject.name] = run_one(
                        _run_name(name, seed), subject, cache, backend, dict(settings[name], seed=seed))
        if args.shard:  # the other shards' finished runs, for the report
            for subject in SUBJECTS[:args.subjects]:
                for name in runnable:
                    for seed in seeds_of(name):
                        done = _result_file(_run_name(name, seed), subject.name)
                        if done.exists():
                            results[name, seed][subject.name] = json.loads(done.read_text())

    def difference(a: dict, b: dict, metric: str) -> float | None:
        """b - a; None where a metric is missing (DIV with one image per prompt)"""
        x, y = a["run"][metric], b["run"][metric]
        return None if x is None or y is None else y - x

    def paired(name: str, metric: str) -> list[float]:
        base = spec.bases.get(name, "lora")
        values = [difference(results[base, seed][s], results[name, seed][s], metric)
                  for seed in seeds_of(name) if (base, seed) in results and (name, seed) in results
                  for s in results[base, seed] if s in results[name, seed]]
        return [v for v in values if v is not None]

    # the noise floor: LoRA against LoRA, seeds paired in turn (1 - 0, 3 - 2, ...), each unit once
    lora_seeds = [seed for seed in seeds_of("lora") if results.get(("lora", seed))]
    noise = {m: [] for m in METRICS}
    for first, second in zip(lora_seeds[0::2], lora_seeds[1::2]):
        for s in results["lora", first]:
            if s in results["lora", second]:
                for m in METRICS:
                    d = difference(results["lora", first][s], results["lora", second][s], m)
                    if d is not None:
                        noise[m].append(d)
    n_noise = len(noise["fidelity"])

    def params(name: str) -> int | None:
        runs = runs_of(name)
        return runs[0]["trainable_parameters"] if runs else None

    def runs_of(name: str) -> list[dict]:
        return [r for seed in seeds_of(name) for r in results[name, seed].values()]

    floor_pairs = ", ".join(f"{b} - {a}" for a, b in zip(lora_seeds[0::2], lora_seeds[1::2]))
    floor_row = (f"| NOISE FLOOR: lora seed {floor_pairs} | {n_noise} | "
                 + " | ".join(_diff_cell(noise[m]) for m in METRICS) + f" | {params('lora'):,} | - |"
                 if n_noise else "| NOISE FLOOR | 0 | needs LoRA at two seeds | - | - | - | - | - |")
    diff_rows, abs_rows = [floor_row], []
    for name in runnable:
        runs = runs_of(name)
        if not runs:
            continue
        # the median: a run that shared the cores with other work (a test run) is an outlier, not a cost
        train_s = statistics.median(r["train_s"] for r in runs)
        if name != "lora":
            diff_rows.append(f"| {name} - {spec.bases.get(name, 'lora')} | {len(paired(name, 'fidelity'))} | "
                             + " | ".join(_diff_cell(paired(name, m)) for m in METRICS)
                             + f" | {params(name):,} | {train_s:.0f} s |")
        abs_rows.append(f"| {name} | {len(runs)} | " + " | ".join(_cell([r['run'][m] for r in runs]) for m in METRICS)
                        + f" | {params(name):,} | {train_s:.0f} s | {statistics.median(r['eval_s'] for r in runs):.0f} s |")
    diff_rows += [f"| {name} - lora | 0 | SKIPPED: {why} | - | - | - | - | - |" for name, why in skipped.items()]
    base_runs = runs_of("lora")
    if base_runs:
        abs_rows.append(f"| base model (no training) | {len(results['lora', seeds[0]])} | "
                        + " | ".join(_cell([r['base'][m] for r in results['lora', seeds[0]].values()]) for m in METRICS)
                        + " | - | - | - |")

    floor_lines = []
    for m in METRICS:
        f = _interval(noise[m])
        if f["sd"]:
            half = (f["high"] - f["low"]) / 2
            floor_lines.append(f"{NAMES[m]} +-{half:.3f} (sd of a pair {f['sd']:.3f}: +-0.02 needs about "
                               f"{_pairs_for(f['sd'], 0.02)} pairs)")
    seen_lines = []
    for name in runnable:
        if name == "lora" or not runs_of(name):
            continue
        for m in METRICS:
            verdict = _seen(paired(name, m), lower_is_better=m == "pres")
            if verdict in ("better", "worse"):
                seen_lines.append(f"{name} {NAMES[m]} {mean_interval(paired(name, m))['mean']:+.3f} ({verdict})")
    claims = spec.claims(results, all_seeds, paired, params, noise)
    lr_rows = [n for n in ("krona-lr3e-3", "tlora-lr1e-2") if n in runnable and runs_of(n) and spec is ADAPTERS]
    if lr_rows:
        claims.append("- At another lr (a check that the verdict is the method's, not the lr's): " + "; ".join(
            f"{n}: " + ", ".join(f"{NAMES[m]} {_diff_cell(paired(n, m))}" for m in ("fidelity", "alignment"))
            + f" over {len(paired(n, 'fidelity'))} pairs" for n in lr_rows) + ".")
    ema_note = ""
    if "ema" in runnable:
        steps, decay = CONFIGS["lora"]["steps"], spec.changes["ema"]["ema_decay"]
        centre, late = _ema_span(decay, steps)
        cap = steps / (9 + steps)  # at the last update, step steps - 1
        ema_note = (f"\nEMA {decay}: the core's warm-up caps the decay at (1 + step) / (10 + step), {cap:.3f} at the last "
                    f"step, {'below' if cap < decay else 'above'} {decay}; the shipped average is centred on step "
                    f"{centre:.0f} with {late * 100:.0f}% of its weight on the last quarter of the steps"
                    + (f"; any decay >= {cap:.3f} (0.999 too) gives the same average here." if cap < decay else "."))
    setting_lines = []
    for name in configs:
        if name in skipped:
            setting_lines.append(f"- `{name}`: SKIPPED, {skipped[name]}; run the part again once it is registered "
                                 "(finished runs are kept) to fill its row in")
            continue
        changed = {k: v for k, v in settings[name].items() if CONFIGS["lora"].get(k) != v or k in spec.changes[name]}
        changed.pop("lr", None)
        setting_lines.append(f"- `{name}`: " + (", ".join(f"{k} {v}" for k, v in changed.items()) or "the recipe")
                             + f"; {rules[name]}" + (f" ({spec.notes[name]})" if name in spec.notes else ""))
    devices = sorted({r.get("device", "?") for runs in results.values() for r in runs.values()})
    # how much of a run's fidelity its (subject, seed) fixes, whatever the row: the correlation,
    # over the units, of each row's fidelity with LoRA's; high, a paired interval is narrower than the floor
    correlations = {}
    for name in runnable:
        units = [(seed, s) for seed in seeds_of(name) for s in results[name, seed] if s in results["lora", seed]]
        if name != "lora" and len(units) >= 3:
            a = [results["lora", seed][s]["run"]["fidelity"] for seed, s in units]
            b = [results[name, seed][s]["run"]["fidelity"] for seed, s in units]
            correlations[name] = statistics.correlation(a, b)
    shared = ("Over the (subject, seed) units, the correlation of a row's fidelity with LoRA's: "
              + ", ".join(f"{n} {r:.2f}" for n, r in correlations.items())
              + ". Where it is high, the unit (subject and training seed) moves both runs together, and the "
              "row's paired interval is narrower than the noise floor, which compares two seeds of one unit. "
              "A row is read against its own interval; the floor says how far one run of a recipe lands "
              "from another run of it." if correlations else "")
    expected = sum(len(seeds_of(n)) for n in runnable) * args.subjects
    finished = sum(len(runs) for runs in results.values())
    partial = (f" INCOMPLETE: {finished} of the {expected} runs are finished (the part continues where it stopped); "
               "a row's pairs column says how many it holds." if finished < expected else "")
    smoke = (f" SMOKE RUN (steps {CONFIGS['lora']['steps']}, {EVALUATION['images_per_prompt']} image(s) per prompt, "
             f"{EVALUATION['inference_steps']} steps): not a result." if args.smoke else "")
    command = (f"python benchmarks/toyworld_quality.py --part {spec.part} --subjects {args.subjects} --seeds {args.seeds}"
               + f" --raised-seeds {args.raised_seeds or chr(39) * 2}" + (f" --configs {args.configs}" if args.configs else "")
               + (f' --section "{args.section}"' if args.section else ""))
    raised_text = (f" (the rows {', '.join(n for n in spec.raised if n in runnable)} also at seeds "
                   f"{', '.join(map(str, raised))}, to narrow the seed papers' intervals)"
                   if raised and any(n in runnable for n in spec.raised) else "")
    body = f"""{time.strftime('%Y-%m-%d')}; the shipped toy-world model; runs on {', '.join(devices) or '-'}.{smoke}{partial}
{spec.intro}Every row is the `lora` row of "Toy world: personalisation" (rank 8, lr {CONFIGS['lora']['lr']:g}, {CONFIGS['lora']['steps']} steps, batch 4,
prior preservation with the same 20 class images, 64 px) with one thing changed{spec.base_text()}; training seeds
{', '.join(map(str, seeds))} on {args.subjects} subjects{raised_text}; evaluated as --part methods (25 toy prompts,
{EVALUATION['images_per_prompt']} images each, {EVALUATION['inference_steps']} steps, guidance {GUIDANCE}, evaluation seed 0 for every run).
A difference is paired: the row's run minus its base row's with the same subject and training seed; mean
and 95% normal interval over the pairs. PRES: lower is better. The noise floor is the LoRA recipe
against itself with another training seed (paired by subject): a difference inside it is noise.
Command: `{command}`

| paired difference | pairs | fidelity | alignment | PRES | DIV | trainable parameters | training time |
| --- | ---: | --- | --- | --- | --- | ---: | ---: |
{chr(10).join(diff_rows)}

Absolute values (mean and 95% interval over every run of the row, all seeds):

| config | runs | fidelity | alignment | PRES | DIV | trainable parameters | training time | evaluation time |
| --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: |
{chr(10).join(abs_rows)}

Differences seen (the interval excludes 0): {'; '.join(seen_lines) or 'none'}; every other difference
in the table: no difference seen.

Noise floor, half-width of its interval ({n_noise} pairs): {'; '.join(floor_lines) or 'not measured (needs LoRA at two seeds)'}.
{shared}

Times are medians over the row's runs. Runs made with --shard (two processes side by side, one
thread each) took one core under a neighbour's load: compare the rows with each other, not with
the single-process times elsewhere in this file.

Claims of the seed papers:
{chr(10).join(claims)}

Settings (learning rate of an adapter: the toy LoRA lr {CONFIGS['lora']['lr']:g} times the ratio of the method's
default lr to LoRA's {_lora_default_lr():g}, the papers' gap carried over; ranks as LoRA's where the method has one):
{chr(10).join(setting_lines)}
{ema_note}"""
    heading = f"{spec.heading}: {args.section}" if args.section else spec.heading
    if args.dry_run:
        return f"{heading} (dry run, not written to {args.results})\n\n{body}"
    return write_section(args.results, heading, body)


def _claim_krona(results, seeds, paired, params, noise) -> str:
    """DiffuseKronA: fidelity at least LoRA's with fewer parameters."""
    if not any(results.get(("krona", seed)) for seed in seeds):
        return "- DiffuseKronA, \"fidelity at least LoRA's with fewer parameters\": not measured (no krona runs)."
    fid = paired("krona", "fidelity")
    fewer = params("krona") < params("lora")
    seen = _seen(fid)
    m = mean_interval(fid)
    numbers = (f"krona {params('krona'):,} trainable parameters against LoRA's {params('lora'):,}; fidelity "
               f"minus LoRA's {_diff_cell(fid)} over {len(fid)} pairs")
    if not fewer:
        verdict = "contradicted on parameters (not fewer)"
    elif seen == "worse":
        verdict = "contradicted: fidelity below LoRA's (the interval is below 0)"
    elif seen == "better":
        verdict = "holds: fidelity above LoRA's (the interval is above 0) with fewer parameters"
    elif seen == "too few pairs":
        verdict = "not seen: too few pairs for an interval"
    else:
        verdict = (f"not seen: fewer parameters, and no fidelity difference seen; the data allow a loss "
                   f"of up to {-m['low']:.3f} or a gain of up to {m['high']:.3f}; " + _budget(fid, noise["fidelity"], "fidelity"))
    return f"- DiffuseKronA, \"fidelity at least LoRA's with fewer parameters\": {verdict} ({numbers})."


def _claim_tlora(results, seeds, paired, params, noise) -> str:
    """Transformed LoRA: better than LoRA (fidelity and alignment) at equal or fewer parameters."""
    if not any(results.get(("tlora", seed)) for seed in seeds):
        return ("- Transformed LoRA, \"better than LoRA at equal or fewer parameters\": not measured (no tlora "
                "runs; the method is skipped until it is in METHODS, or not in --configs).")
    seen = {m: _seen(paired("tlora", m)) for m in ("fidelity", "alignment")}
    numbers = (f"tlora {params('tlora'):,} trainable parameters against LoRA's {params('lora'):,}; minus LoRA's: "
               + ", ".join(f"{NAMES[m]} {_diff_cell(paired('tlora', m))}" for m in seen)
               + f" over {len(paired('tlora', 'fidelity'))} pairs")
    better = [m for m, v in seen.items() if v == "better"]
    worse = [m for m, v in seen.items() if v == "worse"]
    if params("tlora") > params("lora"):
        verdict = "contradicted on parameters (more than LoRA's)"
    elif "too few pairs" in seen.values():
        verdict = "not seen: too few pairs for an interval"
    elif better and not worse:
        verdict = f"holds: {' and '.join(NAMES[m] for m in better)} above LoRA's, nothing below"
    elif worse and not better:
        verdict = f"contradicted: {' and '.join(NAMES[m] for m in worse)} below LoRA's"
    elif better and worse:
        verdict = f"mixed: {NAMES[better[0]]} above LoRA's, {NAMES[worse[0]]} below"
    else:
        verdict = "not seen: no difference seen; " + "; ".join(
            _budget(paired("tlora", m), noise[m], m) for m in seen)
    return f"- Transformed LoRA, \"better than LoRA at equal or fewer parameters\": {verdict} ({numbers})."


def _claim(paper: str, claim: str, name: str, paired, noise, better: tuple[str, ...],
           kept: tuple[str, ...] = ()) -> str:
    """A claim that row `name` raises the `better` metrics without lowering the `kept` ones,
    judged on the paired intervals: holds, contradicted, or not seen (with the budget to see it)."""
    head = f"- {paper}, \"{claim}\""
    first = (*better, *kept)[0]
    if not paired(name, first):
        return f"{head}: not measured (no {name} runs)."
    seen = {m: _seen(paired(name, m), lower_is_better=m == "pres") for m in (*better, *kept)}
    numbers = ", ".join(f"{NAMES[m]} {_diff_cell(paired(name, m))}" for m in seen) + \
        f" over {len(paired(name, first))} pairs"
    if "too few pairs" in seen.values():
        verdict = "not seen: too few pairs for an interval"
    elif any(seen[m] == "worse" for m in (*better, *kept)):
        verdict = "contradicted: " + " and ".join(f"{NAMES[m]} below its base's" for m in seen if seen[m] == "worse")
    elif all(seen[m] == "better" for m in better):
        verdict = "holds: " + " and ".join([f"{NAMES[m]} above its base's" for m in better]
                                           + [f"{NAMES[m]} not lower (the interval {_diff_cell(paired(name, m))} "
                                              "is what the data allow)" for m in kept])
    else:
        verdict = "not seen: " + "; ".join(_budget(paired(name, m), noise[m], m) for m in better if seen[m] != "better")
    return f"{head}: {verdict} ({name} minus its base: {numbers})."


@dataclass
class PairedPart:
    """A --part whose rows are paired differences to a base row."""
    part: str
    heading: str
    changes: dict                  # row -> its changes to CONFIGS["lora"]
    notes: dict                    # row -> why its settings are what they are
    claims: object                 # (results, seeds, paired, params, noise) -> report lines
    bases: dict = field(default_factory=dict)  # row -> the row it is compared with (default lora)
    raised: tuple = ()             # rows also run at --raised-seeds
    intro: str = ""

    def base_text(self) -> str:
        if not self.bases:
            return ""
        return " (or, where the table says so, another base row: " + ", ".join(
            f"{row} against {base}" for row, base in self.bases.items()) + ")"


ADAPTERS = PairedPart(
    "adapters", "## Toy world: adapters and training options", ADAPTER_CHANGES, ADAPTER_NOTES,
    lambda results, seeds, paired, params, noise: [_claim_krona(results, seeds, paired, params, noise),
                                                   _claim_tlora(results, seeds, paired, params, noise)],
    raised=RAISED_CONFIGS,
    intro="Class images: the core makes them with the run's training seed. These runs kept one class folder per "
          "class for every seed, so two shards could regenerate it in turn, and a run may have trained on a mix of "
          "two seeds' class images (one prompt, one model: noise, not bias); later parts use a folder per seed.\n")

# --part objectives (issue 14): each seed paper's loss term against its base recipe. The base
# rows are the adapters part's own runs (same names and settings), read back, not retrained.
OBJECTIVE_CHANGES = {
    "lora": {},
    "pivotal": ADAPTER_CHANGES["pivotal"],
    # HiFi Tuner's mask guidance: the toy subjects' true masks, background weight 0 (the paper's M)
    "mask": dict(masks=True, mask_loss_weight=0.0),
    # the same with automatic masks: --auto-masks with the toy world's own text-prompted segmenter
    # (a small CLIPSeg trained on renders, toyworld/segmenter), prompted with the class name
    "mask-auto": dict(auto_masks=True, auto_mask_model=str(Path(__file__).parents[1] / "src" / "imprint" / "toyworld"
                                                           / "segmenter"), mask_loss_weight=0.0),
    # ClassDiffusion's SPL at the paper's lambda 1, on pivotal tuning (a trained token, as the
    # paper's Custom Diffusion base trains the new token's embedding)
    "spl": dict(ADAPTER_CHANGES["pivotal"], spl_weight=1.0),
    # RPO's preference loss at the paper's weight 1 and lambda_train 0, 4 negatives per training
    # prompt (its SDXL script's count; the SD script's 16 would quadruple the rendering), rewards
    # and labels from the toy world's evaluator
    "rpo": dict(rpo_weight=1.0, rpo_images_per_prompt=4, metrics="toyworld"),
    # DomainStudio's three losses at the paper's weights (100 / 100 / 0.1), on the LoRA recipe's
    # batch of 4 subject + 4 class rows; on subjects (a toy domain set is not built yet)
    "domainstudio": dict(domainstudio_weight=1.0),
    # HiFi Tuner, TI-based, against textual inversion (the methods part's row, same settings):
    # its subject vectors with the regulariser, the true masks, the paper's lr
    "textual_inversion": dict(method="textual_inversion", lr=5e-3, prior_preservation=False),
    # step-wise vectors for the evaluation sampler's 20 steps (the paper: its 50), 10 iterations each
    "hifi": dict(method="hifi", lr=5e-3, prior_preservation=False, masks=True, mask_loss_weight=0.0,
                 hifi_stepwise_steps=EVALUATION["inference_steps"]),
    # DomainStudio on what it was made for, a domain set: 10 images sharing the subject's shape and
    # emblem (the "style") on every colour and pattern, against the LoRA recipe on the same sets
    "lora-domain": dict(domain=True),
    "domainstudio-domain": dict(domain=True, domainstudio_weight=1.0),
    # DisenBooth on the LoRA recipe (its rank, prior preservation kept): the image adapter reads the
    # toy evaluator's pooled trunk, the toy world's only image model (it has no CLIP)
    "disenbooth": dict(method="disenbooth", disenbooth_image_encoder="toyworld"),
}
OBJECTIVES = PairedPart(
    "objectives", "## Toy world: personalisation objectives", OBJECTIVE_CHANGES,
    {"mask": "true masks from the renderer",
     "mask-auto": "masks made by --auto-masks with the toy segmenter (CLIPSeg's architecture trained on renders; "
                  "the hub's CLIPSeg weights are not reachable here)",
     "spl": "the paper's lambda 1, on pivotal", "pivotal": "the adapters part's pivotal row",
     "rpo": "weight 1, lambda_train 0, 4 negatives per training prompt, the toy evaluator's reward",
     "domainstudio": "the paper's weights, LoRA instead of its full fine-tuning",
     "lora-domain": "the LoRA recipe on the domain sets", "domainstudio-domain": "the paper's weights on the domain sets",
     "disenbooth": "the paper's weights 0.01 / 0.001; image encoder: the toy evaluator's trunk (the same network "
                   "scores the runs: it shapes only the training-time f_i, generation uses f_s alone)",
     "textual_inversion": "the methods part's row", "hifi": "5 vectors, w_s 1e-2 (chosen), true masks, the paper's lr 5e-3, step-wise for 20 steps"},
    lambda results, seeds, paired, params, noise: [
        _claim("HiFi Tuner", "mask guidance raises fidelity", "mask", paired, noise, ("fidelity",)),
        _claim("HiFi Tuner", "mask guidance raises fidelity, with automatic masks", "mask-auto", paired, noise,
               ("fidelity",)),
        _claim("HiFi Tuner", "its TI-based tuning (vectors, regularisation, masks) raises fidelity over textual "
               "inversion", "hifi", paired, noise, ("fidelity",)),
        _claim("ClassDiffusion", "SPL raises alignment (CLIP-T) at little fidelity cost", "spl", paired, noise,
               ("alignment",), ("fidelity",)),
        _claim("RPO", "the preference loss keeps alignment with few negatives", "rpo", paired, noise, (),
               ("alignment",)),
        _claim("DomainStudio", "keeps diversity (DIV; here on subjects, not a domain set)", "domainstudio", paired,
               noise, (), ("div",)),
        _claim("DomainStudio", "keeps diversity (DIV) on a domain set", "domainstudio-domain", paired, noise, (),
               ("div",)),
        _claim("DisenBooth", "raises alignment (CLIP-T) and keeps fidelity", "disenbooth", paired, noise,
               ("alignment",), ("fidelity",))],
    bases={"spl": "pivotal", "hifi": "textual_inversion", "domainstudio-domain": "lora-domain"})


def part_objectives(args) -> str:
    return _paired_part(args, OBJECTIVES)


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N, e.g. 0/2") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be in 0..N-1")
    return k, n


def main() -> None:
    global WORK, JSON_OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["evaluator", "base", "methods", "lora-sweep", "adapters", "objectives"],
                        required=True)
    parser.add_argument("--renders", type=int, default=2000, help="evaluator: fresh renders")
    parser.add_argument("--scenes", type=int, default=128, help="base: prompts per group")
    parser.add_argument("--subjects", type=int, default=10, help="methods: subjects for LoRA; adapters: subjects")
    parser.add_argument("--conv", type=int, default=10, help="methods: subjects for LoRA on attention and convolutions")
    parser.add_argument("--no-prior", type=int, default=5, help="methods: subjects for LoRA without prior")
    parser.add_argument("--others", type=int, default=3, help="methods: subjects for full and textual inversion")
    parser.add_argument("--sweep", default="lr=3e-3,steps=100;lr=1e-3,steps=200;prior_loss_weight=3;steps=400",
                        help="lora-sweep: LoRA settings to try beside the `lora` row's, e.g. 'lr=1e-3,steps=200;rank=4'")
    parser.add_argument("--seeds", default="0,1", help="adapters: training seeds, e.g. 0,1")
    parser.add_argument("--raised-seeds", default="2,3", help="adapters: more training seeds for the rows "
                        f"{','.join(RAISED_CONFIGS)} ('' for none)")
    parser.add_argument("--configs", help=f"adapters, objectives: rows to run (their base rows always); adapters: "
                        f"{','.join(ADAPTER_CHANGES)}; objectives: {','.join(OBJECTIVE_CHANGES)}")
    parser.add_argument("--steps", type=int, help="override every method's steps (a smoke run)")
    parser.add_argument("--eval-images", type=int, help="images per prompt of the evaluation (a smoke run)")
    parser.add_argument("--eval-steps", type=int, help="denoising steps of the evaluation (a smoke run)")
    parser.add_argument("--dry-run", action="store_true", help="adapters: print the report, do not write it")
    parser.add_argument("--section", help="adapters, objectives: write the table under the part's heading followed by "
                        "this name (a table of some rows beside the part's full one), e.g. DisenBooth")
    parser.add_argument("--shard", type=_shard, help="adapters: K/N, train only the subjects whose index is K mod N "
                        "(run N processes with OMP_NUM_THREADS=1 on N cores); the report reads every finished run")
    parser.add_argument("--work", help="folder for the runs (default benchmarks/_work/toyworld; a smoke "
                        "run's default is a folder of its own inside it)")
    parser.add_argument("--json-out", help="methods, adapters: also collect every run's result in this JSON file")
    parser.add_argument("--from-json", help="methods, adapters: write the table from results collected in this file")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.smoke = bool(args.steps or args.eval_images or args.eval_steps)
    if args.steps:
        for config in CONFIGS.values():
            config["steps"] = args.steps
    if args.eval_images:
        EVALUATION["images_per_prompt"] = args.eval_images
    if args.eval_steps:
        EVALUATION["inference_steps"] = args.eval_steps
    # a smoke run never leaves its runs where a real run would read them back as finished
    WORK = Path(args.work) if args.work else WORK / (
        f"smoke-steps{args.steps or 'x'}-images{EVALUATION['images_per_prompt']}-eval{EVALUATION['inference_steps']}"
        if args.smoke else "")
    JSON_OUT = Path(args.json_out) if args.json_out else None
    WORK.mkdir(parents=True, exist_ok=True)
    parts = {"evaluator": part_evaluator, "base": part_base, "methods": part_methods, "lora-sweep": part_lora_sweep,
             "adapters": part_adapters, "objectives": part_objectives}
    print(parts[args.part](args))


if __name__ == "__main__":
    main()
