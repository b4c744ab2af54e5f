"""The toy world's base model: pre-training (tiny recipe), the shipped model, the demo."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from imprint.util.errors import ImprintError
from imprint.toyworld.pretrain import (HELD_OUT, MODEL_DIR, TOKEN, PretrainRecipe, build_tokenizer, caption,
                                       encode_dataset, pretrain, pretraining_scene, vocabulary)

TINY = dict(dataset_size=48, vae_dataset_size=16, vae_steps=3, vae_batch_size=4, unet_steps=4, batch_size=4,
            warmup_steps=1, checkpoint_every=2, unet_channels=(32, 32), text_hidden=32, vae_channels=(8, 8))


def test_every_word_of_the_world_is_one_token(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    for word in vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert len(tokenizer("an orange checkered sks diamond on a brick street, bottom right").input_ids) == 14
    assert len(tokenizer("zebra", add_special_tokens=False).input_ids) > 1  # other words: bytes


def test_captions_name_the_shape_and_never_held_out_pairs():
    import random

    rng = random.Random(0)
    scenes = [pretraining_scene(rng) for _ in range(2000)]
    assert not {(s.shape, s.colour) for s in scenes} & HELD_OUT
    texts = [caption(s, rng) for s in scenes]
    assert all(s.shape in t for s, t in zip(scenes, texts) if t)
    assert 0.05 < sum(t == "" for t in texts) / len(texts) < 0.15  # empty captions for guidance
    assert not any(TOKEN in t.split() for t in texts)


def _state(folder, part="unet"):
    return load_file(str(folder / part / "diffusion_pytorch_model.safetensors"))


def test_pretrain_is_seeded_and_resumable(tmp_path):
    a = pretrain(tmp_path / "a", PretrainRecipe(**TINY), device="cpu")
    assert a["parameters"]["unet"] > 0 and (tmp_path / "a" / "pretrain.json").is_file()
    assert not (tmp_path / "a.work").exists()
    pretrain(tmp_path / "b", PretrainRecipe(**TINY), device="cpu")
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = pretrain(tmp_path / "c", PretrainRecipe(**{**TINY, "seed": 1}), device="cpu")
    assert c["recipe"]["seed"] == 1
    sc = _state(tmp_path / "c")
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # killed after its checkpoint at step 2, a run resumes to the same weights as an unbroken one
    code = (f"from imprint.toyworld.pretrain import *; "
            f"pretrain({str(tmp_path / 'd')!r}, PretrainRecipe(**{TINY!r}), device='cpu')")
    env = {**os.environ, "IMPRINT_TEST_KILL": "step:3"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "d.work" / "vae" / "config.json").is_file()
    assert (tmp_path / "d.work" / "checkpoints" / "checkpoint-2").is_dir()
    with pytest.raises(ImprintError, match="another recipe"):  # the VAE's recipe changed
        pretrain(tmp_path / "d", PretrainRecipe(**{**TINY, "vae_lr": 0.5}), device="cpu")
    pretrain(tmp_path / "d", PretrainRecipe(**TINY), device="cpu")
    sd = _state(tmp_path / "d")
    assert all(torch.equal(sa[k], sd[k]) for k in sa)


def test_v_prediction_recipe_and_snapshot_of_a_killed_run(tmp_path):
    from diffusers import StableDiffusionPipeline

    from imprint.toyworld.pretrain import snapshot

    recipe = {**TINY, "prediction_type": "v_prediction", "zero_terminal_snr": True, "standardise_latents": True}
    with pytest.raises(ImprintError, match="no denoiser checkpoint"):
        snapshot(tmp_path / "m", tmp_path / "snap")
    code = (f"from imprint.toyworld.pretrain import *; "
            f"pretrain({str(tmp_path / 'm')!r}, PretrainRecipe(**{recipe!r}), device='cpu')")
    env = {**os.environ, "IMPRINT_TEST_KILL": "step:3"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == -signal.SIGKILL
    assert run_cli("toyworld", "pretrain", "--output", tmp_path / "m", "--snapshot", tmp_path / "snap") == 0
    assert json.loads((tmp_path / "snap" / "pretrain.json").read_text())["snapshot_of_step"] == 2
    pretrain(tmp_path / "m", PretrainRecipe(**recipe), device="cpu")
    for folder in ("snap", "m"):
        pipe = StableDiffusionPipeline.from_pretrained(tmp_path / folder)
        pipe.set_progress_bar_config(disable=True)
        config = pipe.scheduler.config
        assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
        assert config.timestep_spacing == "trailing" and pipe.vae.config.scaling_factor == 1.0
        image = pipe("a red star", height=64, width=64, num_inference_steps=2, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images
        assert np.isfinite(image).all()
    # the snapshot folds the same standardisation into the VAE as the finished run
    snap, final = _state(tmp_path / "snap", "vae"), _state(tmp_path / "m", "vae")
    assert all(torch.equal(snap[k], final[k]) for k in final)


def test_recipe_options_and_a_reused_vae(tmp_path):
    from diffusers import DDPMScheduler

    from imprint.objectives.snr import min_snr_weight

    base = {**TINY, "prediction_type": "epsilon", "zero_terminal_snr": False, "standardise_latents": False}
    pretrain(tmp_path / "a", PretrainRecipe(**base), device="cpu")
    options = {**base, "prediction_type": "v_prediction", "zero_terminal_snr": True, "v_loss_weight": "snr",
               "top_attention": True}
    b = pretrain(tmp_path / "b", PretrainRecipe(**options, offset_noise=0.1), device="cpu",
                 reuse_vae=tmp_path / "a" / "vae")
    assert b["vae_loss_last100"] is None  # the VAE was not trained here
    va, vb = _state(tmp_path / "a", "vae"), _state(tmp_path / "b", "vae")
    assert all(torch.equal(va[k], vb[k]) for k in va)
    # the work folder the VAE was loaded from is not written into the model
    assert "_name_or_path" not in json.loads((tmp_path / "b" / "vae" / "config.json").read_text())
    unet = json.loads((tmp_path / "b" / "unet" / "config.json").read_text())
    assert unet["down_block_types"][0] == "CrossAttnDownBlock2D" and unet["up_block_types"][-1] == "CrossAttnUpBlock2D"
    pretrain(tmp_path / "c", PretrainRecipe(**options), device="cpu", reuse_vae=tmp_path / "a" / "vae")
    ub, uc = _state(tmp_path / "b"), _state(tmp_path / "c")
    assert any(not torch.equal(ub[k], uc[k]) for k in ub)  # offset noise changed the training
    with pytest.raises(ImprintError, match="reuse_vae"):
        pretrain(tmp_path / "d", PretrainRecipe(**base), device="cpu", reuse_vae=tmp_path / "nowhere")
    with pytest.raises(ImprintError, match="v_loss_weight"):
        pretrain(tmp_path / "e", PretrainRecipe(**{**options, "v_loss_weight": "snr2"}), device="cpu")
    # min-SNR on the v loss: the paper's weight is 0 at pure noise and min(snr, 5) / (snr + 1) elsewhere
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              rescale_betas_zero_snr=True)
    t = torch.tensor([0, 500, 999])
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    weight = min_snr_weight(snr, 5.0, "v_prediction")
    assert torch.allclose(weight, torch.clamp(snr, max=5) / (snr + 1))
    assert weight[2] == 0 and min_snr_weight(snr, 5.0, "v_prediction", "snr_plus_one")[2] == 1


def test_latent_standardisation_is_folded_into_the_vae_exactly():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(latent_channels=4, block_out_channels=(8,), norm_num_groups=8, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    with torch.no_grad():  # a VAE whose channels are far from zero mean and unit spread
        vae.quant_conv.bias[:4] = torch.tensor([3.0, -2.0, 0.5, 1.0])
        vae.quant_conv.weight[:4] *= torch.tensor([4.0, 0.2, 1.0, 2.0])[:, None, None, None]
    pixels = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    x = pixels.float() / 127.5 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(x).latent_dist.mean).sample
        mean, std, folded = encode_dataset(vae, pixels, torch.device("cpu"), standardise=True)
        dist = vae.encode(x).latent_dist
        after = vae.decode(dist.mean).sample
    assert torch.allclose(before, after, atol=1e-4)  # the codec is unchanged
    assert torch.allclose(dist.mean, mean, atol=1e-4) and torch.allclose(dist.std, std, atol=1e-5)
    assert torch.allclose(mean.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(mean.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4)
    assert max(folded["scale"]) / min(folded["scale"]) > 3 and vae.config.scaling_factor == 1.0


def test_pretrain_refuses_an_existing_model(tmp_path):
    with pytest.raises(ImprintError, match="zero_terminal_snr"):
        pretrain(tmp_path / "z", PretrainRecipe(**{**TINY, "prediction_type": "epsilon"}), device="cpu")
    assert not (tmp_path / "z.work").exists()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text("{}")
    assert run_cli("toyworld", "pretrain", "--output", tmp_path / "m") == 2


def test_shipped_model_loads_through_diffusers_and_imprint():
    from diffusers import StableDiffusionPipeline

    from imprint.families.sd import StableDiffusionFamily

    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red star on the grass", height=64, width=64, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64) and np.asarray(image).std() > 1
    family = StableDiffusionFamily(str(MODEL_DIR))
    assert family.unet.config.sample_size * 4 == 64
    size = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 40 * 2**20
    shipped = json.loads((MODEL_DIR / "pretrain.json").read_text())
    assert shipped["recipe"] == json.loads(json.dumps(asdict(PretrainRecipe())))  # made by today's recipe


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_cli("demo", "--output", out, "--steps", "4", "--images-per-prompt", "1", "--eval-steps", "2") == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for name in ("fidelity", "alignment", "pres", "div"):
        assert name in metrics["summary"] and name in metrics["summary"]["base"]
        assert name in printed
    assert metrics["summary"]["fidelity"]["mean"] is not None
    assert (out / "eval" / "report.html").is_file() and (out / "eval" / "before.png").is_file()
    assert str(out / "eval" / "report.html") in printed
    assert (out / "run" / "pytorch_lora_weights.safetensors").is_file()
