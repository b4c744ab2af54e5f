"""`imprint toyworld pretrain`: the toy world's base model, trained from scratch.

The result is an ordinary Stable Diffusion folder (vae/, text_encoder/, tokenizer/, unet/,
scheduler/, model_index.json) that `StableDiffusionPipeline.from_pretrained` and imprint load
unchanged. Written here because no pre-trained model of this world exists; the parts are
diffusers' and transformers' own classes, only small.

Three stages, each seeded and resumable:
1. render a dataset of scenes (no emblems: identity detail is what personalisation adds, and
   the shape/colour pairs of HELD_OUT never appear, to measure compositional generalisation);
2. train the VAE (64 px -> 16x16x16 latents) on random crops of other renders, half of them
   with random three-colour emblems: the VAE is the world's image codec and must carry small
   detail (a first VAE trained without emblems blurred them away, and with them any subject's
   identity), while the denoiser still never sees one; then scale its latents (one factor, or
   per channel folded into the VAE's weights) and cache the dataset's latents;
3. train the text encoder and UNet jointly on captions with attributes randomly left out
   (so partial prompts like "a star on the grass" work) and 10% empty captions (for
   classifier-free guidance), min-SNR weighted (epsilon or, with a zero-terminal-SNR
   schedule, v-prediction), with an EMA of the UNet that is what ships.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imprint.core.loop import Task, fit
from imprint.core.precision import make_accelerator
from imprint.util.rng import step_generator
from imprint.core.run_folder import RunFolder
from imprint.core.settings import TrainerSettings
from imprint.objectives import Batch, Objective
from imprint.objectives.base import INSTANCE
from imprint.objectives.denoise import Denoise
from imprint.objectives.snr import MinSNR, SNRSettings
from imprint.util.errors import ImprintError
from imprint.toyworld.render import BACKGROUNDS, COLOURS, PATTERNS, POSITIONS, SCALES, SHAPES, Scene, render

log = logging.getLogger("imprint")

MODEL_DIR = Path(__file__).with_name("model")
# shape/colour pairs pre-training never shows (one per shape, each colour once)
HELD_OUT = frozenset((shape, list(COLOURS)[(3 * i + 1) % len(COLOURS)]) for i, shape in enumerate(SHAPES))
TOKEN = "sks"  # in the vocabulary, never in a caption: the rare identifier of personalisation


@dataclass
class PretrainRecipe:
    seed: int = 0
    dataset_size: int = 40_000
    vae_steps: int = 2_000
    vae_dataset_size: int = 10_000
    vae_emblems: float = 0.5
    latent_channels: int = 16
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_crop: int = 32
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    # Sampling must draw what training saw. With epsilon prediction on SD's schedule (the first
    # shipped model) the last step still leaks the image's mean colour, which the model learns to
    # read in training and never gets at sampling: backgrounds came out washed out (read back 0.2
    # of the time). The fix of Lin et al. 2024 ("Common diffusion noise schedules and sample steps
    # are flawed"): v-prediction on a zero-terminal-SNR schedule, here with per-channel
    # standardised latents and the min-SNR paper's weight on the v loss (benchmarks/RESULTS.md:
    # alignment twice the epsilon recipe's at equal steps; capping snr + 1 instead lost the shapes).
    unet_steps: int = 5_000
    prediction_type: str = "v_prediction"  # or "epsilon"
    zero_terminal_snr: bool = True
    standardise_latents: bool = True  # per latent channel, folded into the VAE (see standardise_latents)
    # min-SNR on the v loss: "snr" is the paper's min(snr, gamma) / (snr + 1), 0 at pure noise;
    # "snr_plus_one" caps the x0 weight snr + 1 at gamma instead, so the pure-noise step keeps weight 1
    v_loss_weight: str = "snr"
    # offset noise (Guttenberg 2023): a per-channel constant added to the training noise, so an
    # epsilon model learns to move an image's mean colour (the washed-out background's other fix)
    offset_noise: float = 0.0
    top_attention: bool = False  # cross-attention at the 16x16 level too (where positions are drawn)
    empty_caption: float = 0.1
    checkpoint_every: int = 500
    unet_channels: tuple[int, ...] = (64, 128, 128)
    text_hidden: int = 64
    text_layers: int = 2
    vae_channels: tuple[int, ...] = (16, 32, 64)


# a changed recipe that keeps these reuses a work folder's trained VAE
VAE_FIELDS = ("seed", "vae_steps", "vae_dataset_size", "vae_emblems", "vae_batch_size", "vae_lr", "vae_crop",
              "latent_channels", "vae_channels")


def vocabulary() -> list[str]:
    words = {"a", "an", "photo", "of", ",", TOKEN}
    words |= set(SHAPES) | set(COLOURS) | set(PATTERNS)
    for phrase, _, _ in BACKGROUNDS.values():
        words |= set(phrase.split())
    for position in POSITIONS:
        words |= set(position.split())
    return sorted(words)


def caption(scene: Scene, rng: random.Random) -> str:
    """A prompt for the scene with some attributes left out (the shape is always named)."""
    if rng.random() < 0.1:
        return ""
    words = []
    if rng.random() < 0.85:
        words.append(scene.colour)
    if scene.pattern != "plain" and rng.random() < 0.85:
        words.append(scene.pattern)
    words.append(scene.shape)
    article = "an" if words[0][0] in "aeiou" else "a"
    text = f"{article} {' '.join(words)}"
    if rng.random() < 0.15:
        text = f"a photo of {text}"
    if rng.random() < 0.8:
        text += " " + BACKGROUNDS[scene.background][0]
    if rng.random() < 0.8:
        text += f", {scene.position}"
    return text


def pretraining_scene(rng: random.Random) -> Scene:
    while True:
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        if (shape, colour) not in HELD_OUT:
            break
    return Scene(shape, colour, rng.choice(PATTERNS), rng.choice(list(BACKGROUNDS)),
                 rng.choice(list(POSITIONS)), rng.choice(list(SCALES)))


def build_tokenizer(folder: Path, max_length: int = 32):
    """CLIP BPE with the toy world's words as single tokens; other text falls back to bytes."""
    from imprint.tiny import build_tokenizer as byte_level_tokenizer

    return byte_level_tokenizer(folder, max_length, vocabulary())


def build_pipeline(recipe: PretrainRecipe, work: Path):
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(recipe.seed)
    build_tokenizer(work / "tokenizer-src").save_pretrained(work / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    special = tokenizer.convert_tokens_to_ids
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.text_hidden, intermediate_size=2 * recipe.text_hidden,
        num_hidden_layers=recipe.text_layers, num_attention_heads=4, max_position_embeddings=32,
        bos_token_id=special("<|startoftext|>"), eos_token_id=special("<|endoftext|>"),
        pad_token_id=special("<|endoftext|>"), projection_dim=recipe.text_hidden))
    c = recipe.unet_channels
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=recipe.latent_channels, out_channels=recipe.latent_channels,
        block_out_channels=c, layers_per_block=1,
        # attention at 8x8 and 4x4 only: with top_attention also at 16x16, a CPU step took 1.75x as
        # long and alignment fell (benchmarks/RESULTS.md)
        down_block_types=("CrossAttnDownBlock2D" if recipe.top_attention else "DownBlock2D",)
        + ("CrossAttnDownBlock2D",) * (len(c) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(c) - 1)
        + ("CrossAttnUpBlock2D" if recipe.top_attention else "UpBlock2D",),
        # diffusers' SD UNet reads attention_head_dim as the number of heads
        cross_attention_dim=recipe.text_hidden, attention_head_dim=4, norm_num_groups=32)
    v = recipe.vae_channels
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=recipe.latent_channels, block_out_channels=v, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * len(v), up_block_types=("UpDecoderBlock2D",) * len(v),
        norm_num_groups=8, sample_size=64, mid_block_add_attention=False)
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, prediction_type=recipe.prediction_type, rescale_betas_zero_snr=recipe.zero_terminal_snr,
        # with a zero-SNR schedule, sampling must start at the last (pure-noise) timestep
        timestep_spacing="trailing" if recipe.zero_terminal_snr else "linspace")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def render_dataset(recipe: PretrainRecipe, for_vae: bool = False) -> tuple[list[Scene], torch.Tensor]:
    from dataclasses import replace

    from tqdm.auto import tqdm

    rng = random.Random(f"imprint-pretrain-{recipe.seed}-{'vae' if for_vae else 'denoiser'}")
    count = recipe.vae_dataset_size if for_vae else recipe.dataset_size
    scenes, pixels = [], np.empty((count, 64, 64, 3), np.uint8)
    for i in tqdm(range(count), desc="rendering", unit="scene", mininterval=5):
        scene = pretraining_scene(rng)
        if for_vae and rng.random() < recipe.vae_emblems:
            scene = replace(scene, emblem=tuple(rng.choice(list(COLOURS)) for _ in range(3)))
        scenes.append(scene)
        pixels[i] = np.asarray(render(scene, rng.randrange(2**31)))
    return scenes, torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def to_unit(pixels_u8: torch.Tensor) -> torch.Tensor:
    return pixels_u8.float() / 127.5 - 1


def _lr(step: int, recipe_steps: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, recipe_steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(vae, pixels: torch.Tensor, recipe: PretrainRecipe, device: torch.device) -> list[float]:
    from tqdm.auto import tqdm

    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    losses, n, crop = [], pixels.shape[0], recipe.vae_crop
    bar = tqdm(range(recipe.vae_steps), desc="vae", unit="step", mininterval=5)
    for step in bar:
        g = step_generator(recipe.seed, 1, step)
        index = torch.randint(0, n, (recipe.vae_batch_size,), generator=g)
        x0, y0 = torch.randint(0, 64 - crop + 1, (2,), generator=g).tolist()
        batch = to_unit(pixels[index, :, y0:y0 + crop, x0:x0 + crop]).to(device)
        posterior = vae.encode(batch).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(device)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / batch[0].numel()
        loss = F.mse_loss(recon, batch) + 0.5 * F.l1_loss(recon, batch) + 1e-4 * kl
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, recipe.vae_steps, 100, recipe.vae_lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    return losses


@torch.no_grad()
def standardise_latents(vae, shift: torch.Tensor, scale: torch.Tensor) -> None:
    """Fold a per-channel standardisation z' = (z - shift) / scale into the VAE's 1x1 quant convs,
    so its latents have zero mean and unit variance per channel and every pipeline that only knows
    `scaling_factor` (StableDiffusionPipeline ignores `shift_factor`) gets them. The trained VAE's
    channels differ up to 4x in spread and are far from zero mean; one global factor leaves some
    channels noised away early and the others late. Exact: decode(encode(x)) is unchanged."""
    c = shift.numel()
    shift, scale = shift.to(vae.quant_conv.weight), scale.to(vae.quant_conv.weight)
    q, p = vae.quant_conv, vae.post_quant_conv  # q: (mean, logvar) of 2c channels; p: c -> c
    q.weight[:c] /= scale[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - shift) / scale
    q.bias[c:] -= 2 * scale.log()
    p.bias += p.weight[:, :, 0, 0] @ shift
    p.weight *= scale[None, :, None, None]
    vae.register_to_config(scaling_factor=1.0)


@torch.no_grad()
def encode_dataset(vae, pixels: torch.Tensor, device: torch.device,
                   standardise: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The dataset's latent posteriors, after standardising the VAE's channels on them (see
    `standardise_latents`) or, without `standardise`, setting the one global `scaling_factor`
    that gives them unit spread; -> (mean, std, what `scale_latents` applies again)."""
    means, stds = [], []
    for chunk in pixels.split(256):
        dist = vae.encode(to_unit(chunk).to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    if not standardise:
        scaling = {"scaling_factor": float(1.0 / mean.std())}
        scale_latents(vae, scaling)
        return mean, std, scaling
    mean, std = mean.double(), std.double()
    shift, scale = mean.mean(dim=(0, 2, 3)), mean.std(dim=(0, 2, 3))
    standardise_latents(vae, shift, scale)
    mean = (mean - shift[None, :, None, None]) / scale[None, :, None, None]
    std = std / scale[None, :, None, None]
    return mean.float(), std.float(), {"shift": shift.tolist(), "scale": scale.tolist()}


def scale_latents(vae, scaling: dict) -> None:
    """Apply `encode_dataset`'s result to a freshly loaded trained VAE."""
    if "scaling_factor" in scaling:
        vae.register_to_config(scaling_factor=scaling["scaling_factor"])
    else:
        standardise_latents(vae, torch.tensor(scaling["shift"]), torch.tensor(scaling["scale"]))


@torch.no_grad()
def vae_round_trip(vae, photos: list, device="cpu") -> list:
    """PIL images -> the same images encoded and decoded by the VAE (posterior means)."""
    from diffusers.image_processor import VaeImageProcessor

    from imprint.image.data import images_to_tensor

    recon = vae.decode(vae.encode(images_to_tensor(photos).to(device)).latent_dist.mean).sample.cpu()
    return VaeImageProcessor().postprocess(recon, output_type="pil")


@torch.no_grad()
def vae_subject_fidelity(vae, device, evaluator: str | Path | None = None) -> float:
    """Mean identity cosine (the fidelity metric's embedding) between each held-out subject
    photo and its VAE reconstruction: how much identity detail the codec keeps."""
    from imprint.toyworld.evaluator import load_evaluator, read_images
    from imprint.toyworld.subjects import SUBJECTS

    photos = [render(scene, seed) for subject in SUBJECTS for scene, seed in subject.photo_scenes()]
    images = vae_round_trip(vae, photos, device)
    evaluator = load_evaluator(evaluator) if evaluator else load_evaluator()
    a, b = read_images(evaluator, photos)["identity"], read_images(evaluator, images)["identity"]
    return float((a * b).sum(-1).mean())


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """One part's state dict out of a denoiser checkpoint ("unet.", "te.", "ema." keys)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


class DenoiserPretraining(Task):
    """Stage 3 on the trainer core: the text encoder and UNet trained jointly on captions of
    the rendered scenes (cached latents), min-SNR weighted, with offset noise if the recipe asks."""

    name = "pretrain"

    def __init__(self, pipe, scenes: list[Scene], mean: torch.Tensor, std: torch.Tensor,
                 recipe: PretrainRecipe, device: torch.device):
        from imprint.families.sd import StableDiffusionFamily

        self.family = StableDiffusionFamily.from_pipeline(pipe)
        self.unet, self.text_encoder = pipe.unet, pipe.text_encoder
        self.scenes, self.mean, self.std, self.recipe, self.device = scenes, mean, std, recipe, device
        self.unet.to(device).train()
        self.text_encoder.to(device).train()
        self.params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        v_loss_weight = recipe.v_loss_weight if self.family.prediction_type == "v_prediction" else "min_snr"
        self.objective = Objective([Denoise(), MinSNR(SNRSettings(
            snr_gamma=recipe.min_snr_gamma, snr_weighting="min_snr" if v_loss_weight == "snr" else v_loss_weight))])

    def settings(self) -> TrainerSettings:
        r = self.recipe
        return TrainerSettings(steps=r.unet_steps, lr=r.lr, weight_decay=1e-2, max_grad_norm=1.0,
                               ema_decay=r.ema_decay, seed=r.seed, checkpoint_every=r.checkpoint_every,
                               keep_checkpoints=1)

    def make_scheduler(self, optimizer, settings):
        r = self.recipe
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr(step, r.unet_steps, r.warmup_steps, 1.0))

    def parameters(self):
        return self.params

    def loss(self, step: int, micro: int):
        r, family = self.recipe, self.family
        g = step_generator(r.seed, 2, step)
        index = torch.randint(0, len(self.scenes), (r.batch_size,), generator=g)
        rng = random.Random(f"{r.seed}-{step}")
        ids = family.tokenize([caption(self.scenes[i], rng) for i in index.tolist()]).to(self.device)
        latents = family.sample_latents(self.mean[index], self.std[index], g)
        noise = torch.randn(latents.shape, generator=g)
        if r.offset_noise:
            noise += r.offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=g)
        t = family.sample_timesteps(r.batch_size, g)
        latents, noise, t = latents.to(self.device), noise.to(self.device), t.to(self.device)
        noisy, target = family.noisy_input_and_target(latents, noise, t)
        conditioning = family.encode_prompts(ids)
        batch = Batch(latents, noise, t, noisy, target, conditioning, roles=[INSTANCE] * r.batch_size)
        return self.objective(batch, family, family.predict(noisy, t, conditioning))

    def trainable_state(self):
        tensors = {f"unet.{k}": v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}
        return tensors | {f"te.{k}": v.detach().cpu().contiguous() for k, v in self.text_encoder.state_dict().items()}

    def load_trainable_state(self, state):
        self.unet.load_state_dict(_part(state, "unet."))
        self.text_encoder.load_state_dict(_part(state, "te."))

    def ema_tensors(self):
        # state_dict() tensors share the parameters' storage; the EMA is of the UNet only
        return {k: v for k, v in self.unet.state_dict().items() if v.dtype.is_floating_point}


def train_denoiser(pipe, scenes: list[Scene], mean: torch.Tensor, std: torch.Tensor,
                   recipe: PretrainRecipe, device: torch.device, work: Path) -> list[float]:
    """-> the loss of every step (the EMA UNet is left in pipe.unet)."""
    task = DenoiserPretraining(pipe, scenes, mean, std, recipe, device)
    run = RunFolder(work)
    ema = fit(task, task.settings(), run, make_accelerator("no", cpu=device.type == "cpu"), resume="latest",
              desc="denoiser")
    ema.copy_to_model()
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return [json.loads(line)["loss"] for line in run.log_path.read_text().splitlines()]


def pretrain(output: str | Path, recipe: PretrainRecipe | None = None, device: str | None = None,
             reuse_vae: str | Path | None = None) -> dict:
    """Train the toy-world base model into `output` (a diffusers folder); -> a summary.
    `reuse_vae`: a VAE folder trained by this recipe's VAE fields (a shipped model's vae/), to
    try denoiser recipes without training the VAE again."""
    recipe = recipe or PretrainRecipe()
    if recipe.prediction_type not in ("epsilon", "v_prediction"):
        raise ImprintError(f"recipe prediction_type {recipe.prediction_type!r}: choose epsilon or v_prediction")
    if recipe.v_loss_weight not in ("snr_plus_one", "snr"):
        raise ImprintError(f"recipe v_loss_weight {recipe.v_loss_weight!r}: choose snr_plus_one or snr")
    if recipe.zero_terminal_snr and recipe.prediction_type == "epsilon":
        raise ImprintError("recipe zero_terminal_snr: noise cannot be predicted from pure noise; "
                           "use it with prediction_type v_prediction")
    output = Path(output)
    if (output / "model_index.json").exists():
        raise ImprintError(f"--output {output}: a model is already there; choose another folder or delete it")
    work = output.with_name(output.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    recipe_file = work / "recipe.json"
    wanted = json.loads(json.dumps(asdict(recipe)))
    if recipe_file.exists() and json.loads(recipe_file.read_text()) != wanted:
        before = json.loads(recipe_file.read_text())
        if any(before.get(k) != wanted[k] for k in VAE_FIELDS) or not (work / "vae" / "config.json").exists():
            raise ImprintError(f"{work}: holds a pre-training with another recipe; delete it or use another --output")
        log.warning("%s: the denoiser's recipe changed; keeping the trained VAE, restarting the denoiser", work)
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        (work / "log.jsonl").unlink(missing_ok=True)
    recipe_file.write_text(json.dumps(asdict(recipe), indent=2))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    times = {}
    t0 = time.time()
    pipe = build_pipeline(recipe, work)
    scenes, pixels = render_dataset(recipe)
    times["render_s"] = time.time() - t0

    t0 = time.time()
    vae_dir = work / "vae"
    if reuse_vae and not (vae_dir / "config.json").exists():
        if not (Path(reuse_vae) / "config.json").is_file():
            raise ImprintError(f"reuse_vae {reuse_vae}: no VAE there (config.json missing)")
        shutil.copytree(reuse_vae, vae_dir)
        (work / "vae_losses.json").write_text("[]")
    if (vae_dir / "config.json").exists():
        pipe.vae = load_work_vae(vae_dir).to(device)
        vae_losses = json.loads((work / "vae_losses.json").read_text())
    else:
        vae_losses = train_vae(pipe.vae, render_dataset(recipe, for_vae=True)[1], recipe, device)
        pipe.vae.save_pretrained(work / "vae-tmp")
        (work / "vae_losses.json").write_text(json.dumps(vae_losses))
        shutil.rmtree(vae_dir, ignore_errors=True)
        (work / "vae-tmp").rename(vae_dir)
    pipe.vae.to(device)
    mean, std, scaling = encode_dataset(pipe.vae, pixels, device, recipe.standardise_latents)
    (work / "scaling.json").write_text(json.dumps(scaling))
    with torch.no_grad():
        check = to_unit(pixels[:256]).to(device)
        recon_mse = F.mse_loss(pipe.vae.decode(pipe.vae.encode(check).latent_dist.mean).sample, check).item()
    subject_fidelity = vae_subject_fidelity(pipe.vae, device)
    log.info("VAE: reconstruction MSE %.4f; identity cosine of reconstructed subject photos %.3f",
             recon_mse, subject_fidelity)
    times["vae_s"] = time.time() - t0

    t0 = time.time()
    losses = train_denoiser(pipe, scenes, mean, std, recipe, device, work)
    times["denoiser_s"] = time.time() - t0

    pipe.to("cpu")
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    summary = {"recipe": asdict(recipe), "device": str(device), "torch": torch.__version__,
               "seconds": times, "vae_reconstruction_mse": recon_mse,
               "vae_subject_fidelity": subject_fidelity,
               "vae_loss_last100": sum(vae_losses[-100:]) / len(vae_losses[-100:]) if vae_losses else None,
               "denoiser_loss_first100": sum(losses[:100]) / 100,
               "denoiser_loss_last500": sum(losses[-500:]) / len(losses[-500:]),
               "held_out": sorted(map(list, HELD_OUT)),
               "parameters": {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                              for name in ("unet", "text_encoder", "vae")}}
    (tmp / "pretrain.json").write_text(json.dumps(summary, indent=2))
    tmp.rename(output)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def load_work_vae(folder: Path):
    """A trained VAE from a work folder. from_pretrained records the folder as the config's
    `_name_or_path`, which save_pretrained would write into the model we ship: drop it."""
    from diffusers import AutoencoderKL
    from diffusers.configuration_utils import FrozenDict

    vae = AutoencoderKL.from_pretrained(folder)
    vae._internal_dict = FrozenDict({k: v for k, v in vae.config.items() if k != "_name_or_path"})
    return vae


def snapshot(output: str | Path, folder: str | Path) -> Path:
    """A loadable model from the newest checkpoint of a running or interrupted pre-training
    (the EMA UNet at that step): to look at, or try personalising, before it ends."""
    from imprint.core.checkpoint import list_checkpoints, load_checkpoint, load_more_tensors

    output, folder = Path(output), Path(folder)
    work = output.with_name(output.name + ".work")
    checkpoints = list_checkpoints(work)
    if not checkpoints or not (work / "vae" / "config.json").is_file():
        raise ImprintError(f"--snapshot: {work} holds no denoiser checkpoint yet; wait for the first one")
    recipe = PretrainRecipe(**json.loads((work / "recipe.json").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipeline(recipe, Path(tmp))
    pipe.vae = load_work_vae(work / "vae")
    scale_latents(pipe.vae, json.loads((work / "scaling.json").read_text()))  # written before any checkpoint
    state, tensors, _ = load_checkpoint(checkpoints[-1])
    pipe.unet.load_state_dict(load_more_tensors(checkpoints[-1], "ema"))
    pipe.text_encoder.load_state_dict(_part(tensors, "te."))
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "pretrain.json").write_text(json.dumps({"snapshot_of_step": state["step"], "recipe": asdict(recipe)}))
    return folder
