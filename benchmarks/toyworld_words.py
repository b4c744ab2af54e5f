"""Which prompt words a toy-world model uses: its denoising loss when one attribute is swapped.

A model that uses a word predicts worse when that word is wrong. For scenes drawn as in
pre-training, this script measures the model's v (or epsilon) loss at several noise levels with
the true prompt and with one attribute swapped for another value (position, colour, background),
left out (position) or the prompt empty. Same latents, same noise, only the text changes.

It also says what each attribute is worth: how much of the latents' variance is explained by
knowing it, the mean squared error of predicting each latent by the mean latent of the scenes that
share the attribute(s). At pure noise that is the best any model can do with those words.

  python benchmarks/toyworld_words.py [--model DIR] [--scenes 256] [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402

from imprint.toyworld.pretrain import MODEL_DIR, pretraining_scene, to_unit  # noqa: E402
from imprint.toyworld.render import BACKGROUNDS, COLOURS, POSITIONS, render  # noqa: E402

TIMESTEPS = (999, 950, 900, 800, 700, 500, 300)
WORTH_SCENES = 8000  # the attribute groups' means need many scenes each


def swapped(scenes, rng: random.Random) -> dict[str, list[str]]:
    """The prompt variants: name -> one prompt per scene."""
    def other(scene, field, values):
        return replace(scene, **{field: rng.choice([v for v in values if v != getattr(scene, field)])}).prompt()

    return {
        "true prompt": [s.prompt() for s in scenes],
        "position swapped": [other(s, "position", list(POSITIONS)) for s in scenes],
        "position left out": [s.prompt(with_position=False) for s in scenes],
        "colour swapped": [other(s, "colour", list(COLOURS)) for s in scenes],
        "background swapped": [other(s, "background", list(BACKGROUNDS)) for s in scenes],
        "empty prompt": [""] * len(scenes),
    }


def explained(scenes, latents: torch.Tensor, fields: tuple[str, ...]) -> float:
    """Mean squared error of predicting each latent by the true mean latent of its group (the
    within-group variance, estimated without bias from the groups with two scenes or more)."""
    groups = defaultdict(list)
    for i, scene in enumerate(scenes):
        groups[tuple(getattr(scene, f) for f in fields)].append(i)
    error, elements = 0.0, 0
    for idx in (idx for idx in groups.values() if len(idx) > 1):
        error += float(((latents[idx] - latents[idx].mean(0)) ** 2).sum()) * len(idx) / (len(idx) - 1)
        elements += latents[idx].numel()
    return error / elements


@torch.no_grad()
def measure(model: Path, count: int, seed: int) -> dict:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    rng = random.Random(f"imprint-words-{seed}")
    scenes = [pretraining_scene(rng) for _ in range(max(count, WORTH_SCENES))]
    pixels = torch.from_numpy(np.stack([np.asarray(render(s, rng.randrange(2**31))) for s in scenes]))
    latents = torch.cat([pipe.vae.encode(to_unit(chunk.permute(0, 3, 1, 2))).latent_dist.mean
                         for chunk in pixels.split(256)]) * pipe.vae.config.scaling_factor
    worth = {", ".join(fields) or "nothing": explained(scenes, latents, fields) for fields in
             ((), ("position",), ("background",), ("background", "colour"), ("background", "colour", "position"),
              ("background", "colour", "position", "scale"))}
    scenes, latents = scenes[:count], latents[:count]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    texts = {name: pipe.text_encoder(pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
        return_tensors="pt").input_ids)[0] for name, prompts in swapped(scenes, rng).items()}
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    losses = {}
    for t in TIMESTEPS:
        steps = torch.full((count,), t)
        noisy = scheduler.add_noise(latents, noise, steps)
        target = scheduler.get_velocity(latents, noise, steps) if v_prediction else noise
        losses[t] = {name: sum(F.mse_loss(pipe.unet(noisy[i:i + 64], steps[i:i + 64], text[i:i + 64]).sample,
                                          target[i:i + 64], reduction="sum").item() for i in range(0, count, 64))
                     / target.numel() for name, text in texts.items()}
    return {"losses": losses, "worth": worth, "prediction_type": scheduler.config.prediction_type}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(MODEL_DIR))
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", help="write the tables to this RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.time()
    found = measure(Path(args.model), args.scenes, args.seed)
    names = list(next(iter(found["losses"].values())))
    rows = [f"| {t} | " + " | ".join(f"{found['losses'][t][n]:.4f}" for n in names) + " |" for t in TIMESTEPS]
    worth = [f"| {k} | {v:.3f} |" for k, v in found["worth"].items()]
    shipped = Path(args.model).resolve() == MODEL_DIR.resolve()
    body = f"""{time.strftime('%Y-%m-%d')}; {'the shipped model' if shipped else args.model}; {args.scenes} scenes drawn as in pre-training, one
noise draw, {found['prediction_type']} loss per latent element; {time.time() - start:.0f} s on the CPU.
Command: `python benchmarks/toyworld_words.py --scenes {args.scenes}`

Loss with the true prompt and with one attribute changed (a word the model uses raises it):

| timestep | {' | '.join(names)} |
| ---: | {' | '.join('---:' for _ in names)} |
{chr(10).join(rows)}

What the words are worth: mean squared error of predicting each (standardised) latent by the mean
latent of the scenes sharing these attributes ({max(args.scenes, WORTH_SCENES)} scenes); at pure noise no model can do
better with them:

| known | error |
| --- | ---: |
{chr(10).join(worth)}
"""
    print(body)
    if args.results:
        write_section(args.results, "## Toy world: which prompt words the model uses", body)


if __name__ == "__main__":
    main()
