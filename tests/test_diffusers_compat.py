"""The files a run leaves load in diffusers as they are, and mean what imprint trained."""

import json

import torch
from safetensors.torch import load_file

from conftest import FAST, run_cli


def fresh_pipeline(model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None,
                                                   requires_safety_checker=False)


def unet_output(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    cond = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), cond).sample


def text_output(pipe):
    ids = pipe.tokenizer(["a photo of a toy"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def merged_by_hand(model, run, part):
    """W + (alpha / rank) B A applied to the base weights, from the file and metadata alone."""
    pipe = fresh_pipeline(model)
    meta = json.loads((run / "metadata.json").read_text())
    scale = meta["hyperparameters"]["alpha"] / meta["hyperparameters"]["rank"]
    state = load_file(run / "pytorch_lora_weights.safetensors")
    module_root = getattr(pipe, part)
    for key, a in state.items():
        if not key.startswith(part + ".") or ".lora_A." not in key:
            continue
        path = key[len(part) + 1:].split(".lora_A.")[0]
        b = state[key.replace(".lora_A.", ".lora_B.")]
        layer = module_root.get_submodule(path)
        with torch.no_grad():  # a conv adapter: A is (rank, in, k, k), B (out, rank, 1, 1)
            layer.weight += scale * (b.flatten(1) @ a.flatten(1)).reshape(layer.weight.shape)
    return pipe


def test_load_lora_weights_equals_merged_weights(tiny_model, lora_run):
    pipe = fresh_pipeline(tiny_model)
    base_unet, base_text = unet_output(pipe.unet), text_output(pipe)
    pipe.load_lora_weights(str(lora_run))
    loaded_unet, loaded_text = unet_output(pipe.unet), text_output(pipe)
    assert (loaded_unet - base_unet).abs().max() > 1e-4  # the LoRA does something
    assert (loaded_text - base_text).abs().max() > 1e-4
    merged = merged_by_hand(tiny_model, lora_run, "unet")
    torch.testing.assert_close(loaded_unet, unet_output(merged.unet), atol=1e-5, rtol=1e-4)
    merged = merged_by_hand(tiny_model, lora_run, "text_encoder")
    torch.testing.assert_close(loaded_text, text_output(merged), atol=1e-5, rtol=1e-4)


def test_conv_lora_loads_in_diffusers_and_exports(tiny_model, subject_dir, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy",
                   "--lora-targets", "attention+conv", "--rank", "2", "--alpha", "4", "--lr", "1e-2",
                   "--steps", "3", "--checkpoint-every", "0", "--output", run, *FAST) == 0
    state = load_file(run / "pytorch_lora_weights.safetensors")
    conv = [k for k in state if ".resnets." in k and k.endswith("conv1.lora_A.weight")]
    assert conv and all(state[k].dim() == 4 for k in conv)
    assert any(k.endswith("to_q.lora_A.weight") for k in state)
    pipe = fresh_pipeline(tiny_model)
    base = unet_output(pipe.unet)
    pipe.load_lora_weights(str(run))
    loaded = unet_output(pipe.unet)
    assert (loaded - base).abs().max() > 1e-4
    torch.testing.assert_close(loaded, unet_output(merged_by_hand(tiny_model, run, "unet").unet), atol=1e-5, rtol=1e-4)
    out = tmp_path / "kohya.safetensors"
    assert run_cli("export", run, "--format", "kohya", "--output", out) == 0
    kohya = fresh_pipeline(tiny_model)
    kohya.load_lora_weights(str(out))
    torch.testing.assert_close(unet_output(kohya.unet), loaded, atol=1e-5, rtol=1e-4)


def test_kohya_export_gives_same_outputs(tiny_model, lora_run, tmp_path):
    out = tmp_path / "dog_kohya.safetensors"
    assert run_cli("export", lora_run, "--format", "kohya", "--output", out) == 0
    state = load_file(out)
    alphas = {k: v for k, v in state.items() if k.endswith(".alpha")}
    assert alphas and all(float(v) == 8.0 for v in alphas.values())  # the true alpha, not the rank
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in state)
    assert any(k.startswith("lora_te_") and k.endswith(".lora_up.weight") for k in state)

    native = fresh_pipeline(tiny_model)
    native.load_lora_weights(str(lora_run))
    kohya = fresh_pipeline(tiny_model)
    kohya.load_lora_weights(str(out))
    torch.testing.assert_close(unet_output(kohya.unet), unet_output(native.unet), atol=1e-5, rtol=1e-4)


def test_load_textual_inversion(tiny_model, subject_dir, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy",
                   "--method", "textual_inversion", "--num-vectors", "2", "--lr", "5e-2",
                   "--steps", "4", "--checkpoint-every", "0", "--output", run, *FAST) == 0
    meta = json.loads((run / "metadata.json").read_text())
    learned = load_file(run / "learned_embeds.safetensors")[meta["placeholder"]]
    assert learned.shape == (2, 32)

    pipe = fresh_pipeline(tiny_model)
    init = pipe.text_encoder.get_input_embeddings().weight[
        pipe.tokenizer("toy", add_special_tokens=False).input_ids].mean(0)
    pipe.load_textual_inversion(str(run / "learned_embeds.safetensors"), token=meta["placeholder"])
    ids = pipe.tokenizer.convert_tokens_to_ids([meta["placeholder"], meta["placeholder"] + "_1"])
    rows = pipe.text_encoder.get_input_embeddings().weight[ids]
    torch.testing.assert_close(rows, learned)
    assert (learned - init).abs().max() > 1e-3  # trained away from the class-name start
