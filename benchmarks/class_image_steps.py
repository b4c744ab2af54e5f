"""Class images: how few denoising steps (and what precision) keep them as good as many (issue 13's time to subject).

Prior preservation's class images are most of a DreamBooth run's time on a small model. This
renders the same class images (same prompts, seeds, guidance and scheduler as `imprint train`
makes them: the model's own scheduler, DPM-Solver++ for the toy model) at several step counts and
reads them with the toy world's evaluator; each step count also in each --precisions (bf16:
under bf16 autocast, as `imprint train --class-precision bf16` renders them):

  shape     share of images whose shape is the prompted class (what a class image must get right)
  TV        total-variation distance of the colour / pattern / background / position / shape
            histograms to the reference step count's (the prior's distribution; 0 = the same)
  DIV       mean pairwise 1 - identity cosine (diversity of the class images)
  change    mean pixel difference to the same image at the reference step count (0-255)

and the noise floor: the same table for the reference steps with other seeds (TV of two seed
sets of the reference). A step count whose TV is inside the floor and whose shape share is
the reference's makes class images the prior cannot tell from the reference's. The reference
is float32.

  python benchmarks/class_image_steps.py [--classes circle,star] [--images 100] [--steps 10,15,20,30,50]
         [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402


def render(pipe, prompt: str, count: int, steps: int, seed: int, precision: str = "fp32") -> list:
    from imprint.core.precision import generation_autocast
    from imprint.image.prior import BULK_AT_64PX
    from imprint.image.sampling import images_per_call

    images, per_call = [], images_per_call(64, at_64px=BULK_AT_64PX)  # prior.py's
    for first in range(0, count, per_call):
        indices = range(first, min(count, first + per_call))
        generators = [torch.Generator("cpu").manual_seed(seed * 100_003 + i) for i in indices]  # prior.py's
        with generation_autocast(torch.device("cpu"), precision):
            images += pipe([prompt] * len(indices), height=64, width=64, num_inference_steps=steps,
                           generator=generators).images
    return images


def histogram_distance(a: list[str], b: list[str]) -> float:
    ca, cb = Counter(a), Counter(b)
    return 0.5 * sum(abs(ca[k] / len(a) - cb[k] / len(b)) for k in set(ca) | set(cb))


def describe(read: dict, class_name: str, reference: dict | None) -> dict:
    attributes = read["attributes"]
    identity = read["identity"]
    cos = identity @ identity.T
    n = cos.shape[0]
    div = float((1 - cos)[~torch.eye(n, dtype=torch.bool)].mean())
    out = {"shape": sum(s == class_name for s in attributes["shape"]) / n, "div": div}
    if reference is not None:
        out["tv"] = max(histogram_distance(attributes[k], reference["attributes"][k]) for k in attributes)
        out["tv_by"] = {k: histogram_distance(attributes[k], reference["attributes"][k]) for k in attributes}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="circle,star")
    parser.add_argument("--images", type=int, default=100, help="class images per class and step count")
    parser.add_argument("--steps", default="10,15,20,30,50")
    parser.add_argument("--reference", type=int, default=50, help="the step count the others are compared with")
    parser.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16: each step count in each")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()

    import numpy as np
    from diffusers import StableDiffusionPipeline

    from imprint.core.precision import cpu_computes_bf16
    from imprint.toyworld.evaluator import load_evaluator, read_images
    from imprint.toyworld.pretrain import MODEL_DIR

    torch.set_grad_enabled(False)
    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    evaluator = load_evaluator()
    steps = [int(s) for s in args.steps.split(",")]
    if args.reference not in steps:
        steps.append(args.reference)
    precisions = args.precisions.split(",")
    unknown = set(precisions) - {"fp32", "bf16"}
    if unknown:
        raise SystemExit(f"--precisions: {', '.join(sorted(unknown))} is not fp32 or bf16")
    ref = (args.reference, "fp32")  # the float32 reference, rendered whatever --precisions says
    kinds = [(n, p) for p in precisions for n in steps]
    if ref not in kinds:
        kinds.append(ref)
    rows = []
    for class_name in args.classes.split(","):
        prompt = f"a {class_name}"
        rendered, seconds = {}, {}
        for kind in kinds:
            start = time.time()
            rendered[kind] = render(pipe, prompt, args.images, kind[0], seed=0, precision=kind[1])
            seconds[kind] = time.time() - start
        floor_images = render(pipe, prompt, args.images, args.reference, seed=1)  # the reference, other seeds
        reads = {kind: read_images(evaluator, images) for kind, images in rendered.items()}
        reference = reads[ref]
        floor = describe(read_images(evaluator, floor_images), class_name, reference)
        for kind in sorted(kinds, key=lambda k: (k[1] != "fp32", k[0])):
            d = describe(reads[kind], class_name, None if kind == ref else reference)
            change = float(np.mean([np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean()
                                    for a, b in zip(rendered[kind], rendered[ref])]))
            label = str(kind[0]) + ("" if kind[1] == "fp32" else f", {kind[1]}")
            rows.append((class_name, label, d["shape"], d.get("tv"), d["div"], change, seconds[kind]))
            print(rows[-1], d.get("tv_by"), flush=True)
        rows.append((class_name, f"{args.reference}, other seeds (floor)", floor["shape"], floor["tv"], floor["div"],
                     None, None))
        print(rows[-1], floor.get("tv_by"), flush=True)

    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    table = "\n".join(f"| {c} | {n} | {cell(s, '.2f')} | {cell(tv, '.3f')} | {cell(div, '.3f')} | {cell(ch, '.1f')} | "
                      f"{cell(sec, '.0f')} |" for c, n, s, tv, div, ch, sec in rows)
    body = f"""{time.strftime('%Y-%m-%d')}; the shipped toy-world model, 64 px, its DPM-Solver++ scheduler, guidance 7.5 (the
pipeline's, as `imprint train` renders class images), {args.images} images per class and step count, image i
from seed 100003 x seed + i as prior.py draws it; read by the toy evaluator. Steps without a precision: float32;
", bf16": the same under bf16 autocast (torch {torch.__version__}, a CPU {"with" if cpu_computes_bf16() else "without"} AMX). TV: the
largest total-variation distance, over the attributes it reads, between the row's histogram and the float32
{args.reference}-step images'; the floor row is {args.reference} steps with another seed, so a TV at or below it is
seed noise. Change: mean absolute pixel difference to the same image (same noise) at {args.reference} float32 steps.
Seconds: rendering time (2 CPU cores, other work may have shared them).
Command: `python benchmarks/class_image_steps.py --classes {args.classes} --images {args.images} --steps {args.steps} --precisions {args.precisions}`

| class | steps | shape | TV | DIV | change | seconds |
| --- | --- | ---: | ---: | ---: | ---: | ---: |
{table}
"""
    heading = "## Class images: denoising steps (issue 13)"
    if args.dry_run:
        print(body)
    else:
        print(write_section(args.results, heading, body))


if __name__ == "__main__":
    main()
