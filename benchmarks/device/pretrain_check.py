"""Device check: held-out alignment of a pre-trained toy-world model at several guidance scales,
and one LoRA personalisation evaluated with --metrics toyworld. Writes JSON to stdout."""
import json
import sys
import time

import torch
from diffusers import StableDiffusionPipeline

from imprint.toyworld.evaluator import load_evaluator
from imprint.toyworld.quality import heldout_scenes, prompt_alignment, seen_scenes

model, out = sys.argv[1], sys.argv[2]
device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = StableDiffusionPipeline.from_pretrained(model).to(device)
pipe.set_progress_bar_config(disable=True)
ev = load_evaluator()
results = {}
for guidance in (2.0, 3.0, 4.5, 7.5):
    t0 = time.time()
    for name, scenes in (("heldout", heldout_scenes(128)), ("seen", seen_scenes(128))):
        r = prompt_alignment(pipe, scenes, ev, guidance=guidance, steps=20)
        results[f"{name}@{guidance}"] = {"alignment": r["alignment"], "per_attribute": r["per_attribute"]}
        if guidance == 4.5:
            from imprint.train.sampling import save_grid
            save_grid(r["images"][:32], f"{out}/{name}.png", cols=8)
    print(guidance, {k: round(v["alignment"], 3) for k, v in results.items() if k.endswith(str(guidance))},
          f"{time.time() - t0:.1f}s", flush=True)
print(json.dumps(results))
