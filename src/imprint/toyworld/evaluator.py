"""The toy world's evaluator: a small CNN that reads a render back.

Attribute heads (shape, colour, pattern, background, position) give the alignment metric
(the CLIP-T analogue); an identity embedding, trained contrastively so that two photos of one
object instance (same shape, colour, pattern and emblem, any scene) lie close, gives the
fidelity metric (the DINO analogue). Written here because no pre-trained model knows this
world; trained by `imprint toyworld train-evaluator`, shipped as safetensors.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from imprint.image.data import images_to_tensor
from imprint.toyworld.render import BACKGROUNDS, COLOURS, PATTERNS, POSITIONS, SCALES, SHAPES, Scene, render

log = logging.getLogger("imprint")

WEIGHTS = Path(__file__).with_name("evaluator.safetensors")
ATTRIBUTES = {"shape": SHAPES, "colour": list(COLOURS), "pattern": PATTERNS,
              "background": list(BACKGROUNDS), "position": list(POSITIONS)}
EMBED_DIM = 64


def _block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Evaluator(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(_block(3, w), nn.MaxPool2d(2), _block(w, 2 * w), nn.MaxPool2d(2),
                                      _block(2 * w, 4 * w), nn.MaxPool2d(2), _block(4 * w, 4 * w))  # 8x8
        pooled = 4 * w
        self.heads = nn.ModuleDict({name: nn.Linear(pooled, len(values))
                                    for name, values in ATTRIBUTES.items() if name != "position"})
        # position needs where, not what: a channel-mean map of the 8x8 grid
        self.position = nn.Sequential(nn.Conv2d(pooled, 8, 1), nn.Flatten(), nn.Linear(8 * 64, len(POSITIONS)))
        self.identity = nn.Sequential(nn.Linear(pooled, 128), nn.ReLU(inplace=True), nn.Linear(128, EMBED_DIM))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.features(pixels)
        pooled = fmap.mean(dim=(2, 3))
        out = {name: head(pooled) for name, head in self.heads.items()}
        out["position"] = self.position(fmap)
        out["identity"] = F.normalize(self.identity(pooled), dim=-1)
        return out


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    return images_to_tensor([im.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC) for im in images])


def random_instance(rng: random.Random) -> dict:
    return {"shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)),
            "pattern": rng.choice(PATTERNS),
            "emblem": tuple(rng.choice(list(COLOURS)) for _ in range(3)) if rng.random() < 0.8 else None}


def training_batch(rng: random.Random, instances: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`instances` object instances, two views each (other scene, position, scale, seed)."""
    images, labels = [], {name: [] for name in ATTRIBUTES}
    for _ in range(instances):
        instance = random_instance(rng)
        for _ in range(2):
            scene = Scene(background=rng.choice(list(BACKGROUNDS)), position=rng.choice(list(POSITIONS)),
                          scale=rng.choice(list(SCALES)), **instance)
            images.append(render(scene, rng.randrange(2**31)))
            for name, values in ATTRIBUTES.items():
                labels[name].append(values.index(getattr(scene, name)))
    return to_tensor(images), {k: torch.tensor(v) for k, v in labels.items()}


def degrade(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What a generative model does to a render: blur, noise, a small colour shift, each at
    random per image. Training on it makes the identity embedding and the heads read a
    generated image as they read a render (without it, a VAE round trip of a subject photo
    scored an identity cosine of 0.34 to the photo, against 0.88 between two photos)."""
    n = pixels.shape[0]

    def draw(low, high):
        return low + (high - low) * torch.rand(n, generator=generator)

    out = pixels.clone()
    sigma = draw(0.3, 1.6) * (torch.rand(n, generator=generator) < 0.7)
    radius = torch.arange(-3, 4, dtype=torch.float32)
    for i in range(n):
        if sigma[i] > 0:
            k = torch.exp(-radius ** 2 / (2 * sigma[i] ** 2))
            k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
            x = F.conv2d(F.pad(out[i:i + 1], (3, 3, 0, 0), mode="replicate"), k, groups=3)
            out[i:i + 1] = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), k.transpose(2, 3), groups=3)
    noise = draw(0.0, 0.08) * (torch.rand(n, generator=generator) < 0.5)
    out = out + noise.view(-1, 1, 1, 1) * torch.randn(out.shape, generator=generator)
    gain, shift = draw(0.9, 1.1), draw(-0.06, 0.06)
    jitter = torch.rand(n, generator=generator) < 0.5
    out = torch.where(jitter.view(-1, 1, 1, 1), out * gain.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1), out)
    return out.clamp(-1, 1)


class _Batches(torch.utils.data.IterableDataset):
    """Step i's batch from its own seed: the same data with any number of loader workers."""

    def __init__(self, seed: int, steps: int, instances: int):
        self.seed, self.steps, self.instances = seed, steps, instances

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, index = (info.num_workers, info.id) if info else (1, 0)
        for step in range(index, self.steps, workers):
            pixels, labels = training_batch(random.Random(f"{self.seed}-{step}"), self.instances)
            yield step, degrade(pixels, torch.Generator().manual_seed(self.seed * 100_003 + step)), labels


def contrastive_loss(embeddings: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE over the batch: rows 2i and 2i+1 are two views of one instance."""
    sims = embeddings @ embeddings.T / temperature
    sims.fill_diagonal_(float("-inf"))
    target = torch.arange(embeddings.shape[0], device=embeddings.device) ^ 1  # 0<->1, 2<->3, ...
    return F.cross_entropy(sims, target)


def train_evaluator(steps: int = 1800, instances: int = 48, seed: int = 0, lr: float = 2e-3,
                    output: Path = WEIGHTS, device: str | None = None) -> dict:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    model = Evaluator().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.time()
    # rendering is the slow part: on a machine with spare cores, loader workers render ahead
    workers = 0 if device.type == "cpu" else min(12, max(0, (os.cpu_count() or 1) - 2))
    batches = torch.utils.data.DataLoader(_Batches(seed, steps, instances), batch_size=None, num_workers=workers,
                                          prefetch_factor=4 if workers else None)
    for step, pixels, labels in tqdm(batches, total=steps, desc="evaluator", unit="step"):
        out = model(pixels.to(device))
        loss = sum(F.cross_entropy(out[name], labels[name].to(device)) for name in ATTRIBUTES)
        loss = loss + contrastive_loss(out["identity"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 250 == 0:
            log.info("evaluator step %d: loss %.3f (%.0f s)", step + 1, loss.item(), time.time() - start)
    model.eval().cpu()
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()
             if v.dtype.is_floating_point}
    state.update({k: v for k, v in model.state_dict().items() if not v.dtype.is_floating_point})
    save_file(state, str(output), metadata={"steps": str(steps), "seed": str(seed), "augmented": "degrade"})
    return {"steps": steps, "seconds": time.time() - start, "device": str(device)}


def load_evaluator(path: str | Path = WEIGHTS) -> Evaluator:
    from safetensors.torch import load_file

    model = Evaluator()
    state = load_file(str(path))
    model.load_state_dict({k: v.float() if v.dtype.is_floating_point else v for k, v in state.items()})
    return model.eval()


@torch.no_grad()
def read_images(model: Evaluator, images: list[Image.Image], batch_size: int = 64) -> dict:
    """-> predicted attribute names per image and identity embeddings."""
    predictions = {name: [] for name in ATTRIBUTES}
    embeddings = []
    for i in range(0, len(images), batch_size):
        out = model(to_tensor(images[i:i + batch_size]))
        for name, values in ATTRIBUTES.items():
            predictions[name] += [values[j] for j in out[name].argmax(-1).tolist()]
        embeddings.append(out["identity"])
    return {"attributes": predictions, "identity": torch.cat(embeddings)}


def accuracy_on_fresh_renders(model: Evaluator, count: int = 800, seed: int = 12345) -> dict[str, float]:
    rng = random.Random(seed)
    scenes = [Scene(background=rng.choice(list(BACKGROUNDS)), position=rng.choice(list(POSITIONS)),
                    scale=rng.choice(list(SCALES)), **random_instance(rng)) for _ in range(count)]
    read = read_images(model, [render(s, rng.randrange(2**31)) for s in scenes])["attributes"]
    return {name: sum(p == getattr(s, name) for p, s in zip(read[name], scenes)) / count
            for name in ATTRIBUTES}
