"""HiFi Tuner's reference-guided generation: its DDIM sampler against diffusers', the inversion as
the exact inverse of a DDIM step, the mask alignment, phi_h's steps lowering the masked error, and
`imprint generate --reference-guidance` end to end."""

import json

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import FAST, draw_subject, run_cli
from imprint.image.reference_guidance import (GuidanceSettings, Sampler, fit_similarity, invert, latent_mask,
                                              warp)


def disc(size: int, cx: float, cy: float, r: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r ** 2


def test_sampler_is_diffusers_ddim(tiny_model):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    sampler = Sampler(pipe, "a photo of a toy", "", 4, 5.0)
    ours = sampler.sample(sampler.initial_latents(32, seed=3))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    theirs = pipe("a photo of a toy", height=32, width=32, num_inference_steps=4, guidance_scale=5.0,
                  generator=torch.Generator("cpu").manual_seed(3), output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inversion_undoes_ddim_steps_of_the_same_noise(prediction_type):
    """With a model whose noise is the same at every step, DDIM sampling from the inverted x_T
    gives back x_0: inversion is the DDIM step run backwards."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(prediction_type=prediction_type, beta_schedule="scaled_linear", clip_sample=False)
    scheduler.set_timesteps(5)
    torch.manual_seed(0)
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)

    def predict(x, t):  # the output that means noise `eps` for input x at timestep t
        a = scheduler.alphas_cumprod[t]
        return eps if prediction_type == "epsilon" else (eps - (1 - a).sqrt() * x) / a.sqrt()

    levels = invert(predict, scheduler, x0)
    assert list(levels) == sorted(scheduler.timesteps.tolist())
    x = levels[int(scheduler.timesteps[0])]
    for t in scheduler.timesteps:
        x = scheduler.step(predict(x, int(t)), t, x).prev_sample
    torch.testing.assert_close(x, x0, rtol=1e-4, atol=1e-4)


def test_alignment_moves_the_reference_mask_onto_the_sample_mask():
    source, target = disc(32, 10, 12, 4), disc(32, 20, 18, 8)
    forward = fit_similarity(source, target)
    moved = warp(source.float()[None, None], forward, (32, 32))[0, 0] >= 0.5
    iou = (moved & target).sum() / (moved | target).sum()
    assert iou > 0.8, float(iou)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(warp(target.float()[None, None], identity, (32, 32))[0, 0], target.float())
    assert torch.equal(fit_similarity(source, torch.zeros(32, 32, dtype=torch.bool)), identity)  # no mask: identity


def test_null_text_steps_pull_the_masked_latents_to_the_reference(tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.unet.requires_grad_(False)
    sampler = Sampler(pipe, "a photo of a toy", "", 5, 5.0)
    start = sampler.initial_latents(32, seed=0)
    torch.manual_seed(1)
    reference = {int(t): torch.randn_like(start) for t in sampler.scheduler.timesteps}
    mask = latent_mask(disc(32, 16, 16, 9), tuple(start.shape[-2:]))
    settings = GuidanceSettings(start=1.0, end=0.2, null_steps=3, null_lr=5e-2)
    sampler.guided(start, reference, mask, settings)
    assert settings.step_range(5) == (0, 4) and GuidanceSettings().step_range(50) == (10, 40)  # the paper's 40, 10
    assert len(sampler.trace) == 4  # the steps from t_s to t_e that have a next level
    assert all(after < before for before, after in sampler.trace), sampler.trace


def test_generate_with_reference_guidance(tiny_model, tmp_path, metric_models):
    from imprint.tiny import save_clipseg_model

    folder = tmp_path / "subject"
    (folder / "masks").mkdir(parents=True)
    for i in range(2):
        draw_subject(folder / f"{i}.png", i)
        mask = Image.new("L", (48, 48), 0)
        ImageDraw.Draw(mask).ellipse((6 + 3 * i, 10, 32 + 3 * i, 36), fill=255)
        mask.save(folder / "masks" / f"{i}.png")
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST, "--steps", "2",
                   "--checkpoint-every", "0", "--no-final-samples", "--method", "hifi", "--masks", folder / "masks",
                   "--mask-loss-weight", "0", "--hifi-stepwise-steps", "0", "--output", run) == 0
    segmenter = save_clipseg_model(tmp_path / "clipseg")
    dino, _ = metric_models
    out = tmp_path / "out"
    assert run_cli("generate", "--run", run, "a sks toy on the beach", "--num-images", "2", "--inference-steps", "3",
                   "--reference-guidance", "--reference-segmenter", segmenter, "--reference-features", dino,
                   "--output", out) == 0
    chosen = json.loads((out / "reference_guidance.json").read_text())
    assert [c["image"] for c in chosen] == ["00-00.png", "00-01.png"]
    assert all(c["reference"] in (0, 1) and c["reference_mask_cells"] > 0 for c in chosen)
    assert (out / "00-01.png").exists()


def test_reference_guidance_needs_masks(lora_run, tmp_path, capsys):
    code = run_cli("generate", "--run", lora_run, "a sks toy", "--num-images", "1", "--inference-steps", "2",
                   "--reference-guidance", "--output", tmp_path / "out")
    assert code != 0
    err = capsys.readouterr().err
    assert "--reference-masks" in err and "Traceback" not in err
