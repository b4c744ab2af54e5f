"""The model families beyond SD 1.x/2.x, each on a tiny pipeline built from its config: the
conditioning equals what the family's diffusers pipeline computes; LoRA trains, resumes exactly,
generates, and its files load in diffusers and in the kohya / ComfyUI layout."""

import json

import pytest
import torch
from safetensors import safe_open

from conftest import FAST, run_cli
from test_resume import final_weights, logged_steps, train


def killed_and_resumed_equals_unbroken(model, subject_dir, tmp_path, extra, steps: int, method: str = "lora"):
    """A LoRA run killed at step 5 (checkpoints every 2) and resumed ends with the unbroken run's
    weights, each step logged once; returns the resumed run's folder."""
    unbroken = train(model, subject_dir, tmp_path / "unbroken", extra)
    assert unbroken.returncode == 0, unbroken.stderr
    broken = tmp_path / "broken"
    assert train(model, subject_dir, broken, extra, kill="step:5").returncode == -9
    resumed = train(model, subject_dir, broken, extra, resume=True)
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr
    assert logged_steps(broken) == list(range(1, steps + 1))
    a, b = final_weights(tmp_path / "unbroken", method), final_weights(broken, method)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    return broken


# --- SDXL ---------------------------------------------------------------------------------------
def test_sdxl_conditioning_is_the_pipelines(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    from imprint.families import load_family

    family = load_family(str(tiny_sdxl))
    assert family.name == "sdxl" and family.parts({"denoiser", "text_encoder"}) == ["text_encoder", "text_encoder_2",
                                                                                     "unet"]
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    cond = family.encode_prompts(family.tokenize(["a photo of sks toy", "a dog"]))
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        ["a photo of sks toy", "a dog"], device="cpu", do_classifier_free_guidance=True)
    torch.testing.assert_close(cond["prompt_embeds"], embeds)
    torch.testing.assert_close(cond["pooled_prompt_embeds"], pooled)
    sampling = family.encode_for_sampling(["a dog"])[0]  # force_zeros_for_empty_prompt: zeros, as the pipeline
    torch.testing.assert_close(sampling["negative_prompt_embeds"], negative[:1])
    torch.testing.assert_close(sampling["negative_pooled_prompt_embeds"], negative_pooled[:1])
    # the UNet's added conditioning: pooled text and (original size, crop (0, 0), target size)
    noisy, t = torch.randn(2, 4, 6, 4), torch.tensor([10, 700])
    h, w = 6 * pipe.vae_scale_factor, 4 * pipe.vae_scale_factor
    time_ids = torch.tensor([[h, w, 0, 0, h, w]] * 2, dtype=torch.float32)
    with torch.no_grad():
        direct = pipe.unet(noisy, t, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        torch.testing.assert_close(family.predict(noisy, t, cond), direct)


SDXL_LORA = ["--method", "lora", "--lr", "1e-2", "--rank", "2", "--alpha", "4", "--train-text-encoder",
             "--prior-preservation", "--num-class-images", "2"]


def test_sdxl_lora_resumes_exactly_and_loads_in_diffusers(tiny_sdxl, subject_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    broken = killed_and_resumed_equals_unbroken(tiny_sdxl, subject_dir, tmp_path, SDXL_LORA, steps=8)
    metadata = json.loads((broken / "metadata.json").read_text())
    assert metadata["family"] == "sdxl" and metadata["hyperparameters"]["resolution"] == 32

    # diffusers' own loader takes every tensor of the file, each to its part
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe.load_lora_weights(str(broken), weight_name="pytorch_lora_weights.safetensors")
    with safe_open(str(broken / "pytorch_lora_weights.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    parts = {k.split(".")[0] for k in saved}
    assert parts == {"unet", "text_encoder", "text_encoder_2"}
    for part in parts:
        loaded = get_peft_model_state_dict(getattr(pipe, part), adapter_name=pipe.get_active_adapters()[0])
        mine = {k[len(part) + 1:]: v for k, v in saved.items() if k.startswith(part + ".")}
        assert len(loaded) == len(mine)
        for key, value in mine.items():
            torch.testing.assert_close(loaded[key], value)

    gen = tmp_path / "gen"
    assert run_cli("generate", "--run", broken, "a sks toy", "--num-images", "1", "--inference-steps", "2",
                   "--output", gen) == 0
    assert (gen / "00-00.png").is_file()


def test_sdxl_kohya_export_is_what_comfyui_and_diffusers_read(tiny_sdxl, subject_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_sdxl, "--images", subject_dir, "--class-name", "toy", "--steps", "3",
                   "--rank", "2", "--alpha", "8", "--lr", "1e-2", "--train-text-encoder", "--checkpoint-every", "0",
                   "--output", run, *FAST) == 0
    out = tmp_path / "kohya.safetensors"
    assert run_cli("export", run, "--output", out) == 0
    with safe_open(str(out), "pt") as f:
        keys, header = set(f.keys()), f.metadata()
        alphas = {f.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
    assert header["ss_base_model_version"] == "sdxl_base_v1-0" and "ss_v2" not in header and alphas == {8.0}
    # ComfyUI's names for SDXL's CLIP-L (te1) and CLIP-G (te2) layers, and diffusers' UNet paths
    for prefix in ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                   "lora_te2_text_model_encoder_layers_1_self_attn_out_proj",
                   "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"):
        assert {f"{prefix}.lora_down.weight", f"{prefix}.lora_up.weight", f"{prefix}.alpha"} <= keys
    # the kohya file, read by diffusers' kohya converter, is the same model as the native file
    native = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    native.load_lora_weights(str(run), weight_name="pytorch_lora_weights.safetensors")
    kohya = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    kohya.load_lora_weights(str(tmp_path), weight_name=out.name)
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    ids = native.tokenizer(["a sks toy"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    noisy, embeds = torch.randn(1, 4, 4, 4), torch.randn(1, 77, 64)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
    with torch.no_grad():
        for name in ("text_encoder", "text_encoder_2"):
            a, b, c = (getattr(p, name)(ids, output_hidden_states=True).hidden_states[-2] for p in (native, kohya, base))
            torch.testing.assert_close(a, b)
            assert (a - c).abs().max() > 1e-4
        a, b, c = (p.unet(noisy, 10, embeds, added_cond_kwargs=added).sample for p in (native, kohya, base))
        torch.testing.assert_close(a, b)
        assert (a - c).abs().max() > 1e-5


def test_sdxl_pivotal_tuning_trains_the_token_in_both_vocabularies(tiny_sdxl, subject_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from imprint.methods.textual_inversion import TextualInversion

    extra = ["--method", "pivotal", "--lr", "1e-2", "--rank", "2", "--num-vectors", "2", "--freeze-embedding-at", "3"]
    run = killed_and_resumed_equals_unbroken(tiny_sdxl, subject_dir, tmp_path, extra, steps=8, method="pivotal")
    learned = load_file(str(run / "learned_embeds.safetensors"))
    assert set(learned) == {"clip_l", "clip_g"} and learned["clip_l"].shape == (2, 32)
    metadata = json.loads((run / "metadata.json").read_text())
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    TextualInversion.load_into_pipeline(pipe, run, metadata)
    for key, encoder, tokenizer in (("clip_l", pipe.text_encoder, pipe.tokenizer),
                                    ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2)):
        ids = tokenizer.convert_tokens_to_ids([metadata["placeholder"], metadata["placeholder"] + "_1"])
        torch.testing.assert_close(encoder.get_input_embeddings().weight[ids].detach(), learned[key])
    assert run_cli("generate", "--run", run, "a sks toy", "--num-images", "1", "--inference-steps", "2",
                   "--output", tmp_path / "gen") == 0


def test_a_token_method_on_sd3_is_a_clear_error(tiny_sd3, subject_dir, tmp_path, capsys):
    rc = run_cli("train", "--model", tiny_sd3, "--images", subject_dir, "--class-name", "toy", "--steps", "1",
                 "--method", "textual_inversion", "--output", tmp_path / "run", *FAST)
    err = capsys.readouterr().err
    assert rc == 2 and "textual_inversion" in err and "sd3" in err and "Traceback" not in err


# --- SD3 and FLUX: flow matching ------------------------------------------------------------------
def test_flow_matching_target_and_timesteps_against_a_direct_computation(tiny_flux):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from imprint.families import load_family
    from imprint.families.flow import FlowMatchingSettings

    family = load_family(str(tiny_flux))
    family.configure(FlowMatchingSettings())
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(3, 16, 8, 6, generator=g), torch.randn(3, 16, 8, 6, generator=g)
    t = torch.tensor([100.0, 500.0, 900.0])
    noisy, target = family.noisy_input_and_target(x, e, t)
    s = (t / 1000).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - s) * x + s * e)
    torch.testing.assert_close(target, e - x)
    torch.testing.assert_close(family.predicted_x0(noisy, target, t), x, rtol=1e-5, atol=1e-5)

    # logit-normal draws, shifted by FLUX's resolution-dependent mu, as its scheduler shifts sigmas
    config = family.noise_scheduler.config
    tokens = (8 // 2) * (6 // 2)
    mu = calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    drawn = family.sample_timesteps(5, torch.Generator().manual_seed(1), x.shape)
    u = torch.sigmoid(torch.normal(0.0, 1.0, (5,), generator=torch.Generator().manual_seed(1)))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    torch.testing.assert_close(drawn, 1000 * scheduler.time_shift(mu, 1.0, u))
    # a fixed --timestep-shift: the static shift of SD3's scheduler (shift 3)
    family.configure(FlowMatchingSettings(timestep_sampling="uniform", timestep_shift=3.0))
    drawn = family.sample_timesteps(5, torch.Generator().manual_seed(2))
    u = torch.rand(5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(drawn, 1000 * 3 * u / (1 + 2 * u))


def one_euler_step(pipe, family, latents, prompt, guidance):
    """The pipeline's first step from `latents` with a single step: x - s * v, s its sigma."""
    from diffusers import FluxPipeline

    encoded = family.encode_for_sampling([prompt])[0]
    b, c, h, w = latents.shape
    given = FluxPipeline._pack_latents(latents, b, c, h, w) if family.name == "flux" else latents
    out = pipe(**{k: v for k, v in encoded.items() if not k.startswith("negative")}, latents=given,
               num_inference_steps=1, guidance_scale=guidance, height=h * pipe.vae_scale_factor,
               width=w * pipe.vae_scale_factor, output_type="latent").images
    if family.name == "flux":
        out = FluxPipeline._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                           pipe.vae_scale_factor)
    return out, pipe.scheduler.sigmas[0], encoded


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_flow_family_predicts_what_its_pipeline_steps_with(name, tiny_flux, tiny_sd3):
    from imprint.families import load_family
    from imprint.families.flow import FlowMatchingSettings

    model = {"flux": tiny_flux, "sd3": tiny_sd3}[name]
    family = load_family(str(model))
    family.configure(FlowMatchingSettings(flux_guidance=2.5))
    pipe = family.pipeline()
    # the family's prompt encoding is the pipeline's own
    kwargs = {"max_sequence_length": family.max_sequence_length}
    if name == "flux":
        embeds, pooled, _ = pipe.encode_prompt(["a sks toy", "a dog"], None, **kwargs)
    else:
        embeds, _, pooled, _ = pipe.encode_prompt(["a sks toy", "a dog"], None, None, do_classifier_free_guidance=False,
                                                  **kwargs)
    cond = family.encode_prompts(family.tokenize(["a sks toy", "a dog"]))
    torch.testing.assert_close(cond["prompt_embeds"], embeds)
    torch.testing.assert_close(cond["pooled_prompt_embeds"], pooled)

    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    stepped, sigma, encoded = one_euler_step(pipe, family, latents, "a sks toy", guidance=2.5 if name == "flux" else 1.0)
    with torch.no_grad():
        velocity = family.predict(latents, (sigma * 1000).reshape(1), encoded)
    torch.testing.assert_close(stepped, latents - sigma * velocity, rtol=1e-4, atol=1e-4)


FLOW_LORA = ["--method", "lora", "--lr", "1e-2", "--rank", "2", "--alpha", "4", "--train-text-encoder", "--steps", "6",
             "--loss-weighting", "cosmap", "--timestep-sampling", "mode"]


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_flow_family_lora_resumes_generates_loads_and_exports(name, tiny_flux, tiny_sd3, subject_dir, tmp_path):
    from peft.utils import get_peft_model_state_dict

    from imprint.families import FAMILIES

    model = {"flux": tiny_flux, "sd3": tiny_sd3}[name]
    extra = FLOW_LORA + (["--prior-preservation", "--num-class-images", "2"] if name == "sd3" else [])
    broken = killed_and_resumed_equals_unbroken(model, subject_dir, tmp_path, extra, steps=6)

    family = FAMILIES[name]
    with safe_open(str(broken / "pytorch_lora_weights.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    assert {k.split(".")[0] for k in saved} == {"transformer", *family.text_encoder_names}
    pipe = family.load_pipeline(str(model))
    pipe.load_lora_weights(str(broken), weight_name="pytorch_lora_weights.safetensors")
    for part in {k.split(".")[0] for k in saved}:
        loaded = get_peft_model_state_dict(getattr(pipe, part), adapter_name=pipe.get_active_adapters()[0])
        mine = {k[len(part) + 1:]: v for k, v in saved.items() if k.startswith(part + ".")}
        assert len(loaded) == len(mine)
        for key, value in mine.items():
            torch.testing.assert_close(loaded[key], value)

    assert run_cli("generate", "--run", broken, "a sks toy", "--num-images", "1", "--inference-steps", "2",
                   "--output", tmp_path / "gen") == 0
    (tmp_path / "prompts.txt").write_text("a {token} {class_name}\na {token} {class_name} on a beach\n")
    assert run_cli("evaluate", broken, "--metrics", "toyworld", "--prompts", tmp_path / "prompts.txt",
                   "--images-per-prompt", "1", "--inference-steps", "2") == 0
    assert (broken / "eval" / "report.html").is_file()
    out = tmp_path / "kohya.safetensors"
    assert run_cli("export", broken, "--output", out) == 0
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
    # ComfyUI reads a DiT's diffusers paths under lora_transformer_ and CLIP-L under lora_te1_
    block = "lora_transformer_transformer_blocks_0_attn_to_q"
    assert {f"{block}.lora_down.weight", f"{block}.lora_up.weight", f"{block}.alpha"} <= keys
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    assert all(k.startswith(tuple(family.kohya_prefixes.values())) for k in keys)
    if name == "flux":
        exported_attention_is_what_diffusers_reads(out, broken, model)


def exported_attention_is_what_diffusers_reads(exported, run, model):
    """diffusers reads the lora_transformer_ / lora_te1_ layout ComfyUI loads (its "mixture" converter,
    which knows the attention projections, not the MLPs): each attention layer's delta, alpha folded
    in, is the run's B A alpha / rank."""
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    tensors = load_file(str(exported))
    attention = {k: v for k, v in tensors.items() if "_attn_" in k or k.startswith("lora_te1_")}
    pipe = FluxPipeline.from_pretrained(model)
    pipe.load_lora_weights(attention)
    native = load_file(str(run / "pytorch_lora_weights.safetensors"))
    scale = 4 / 2  # --alpha 4, --rank 2
    checked = 0
    for module_name, module in pipe.transformer.named_modules():
        if hasattr(module, "lora_A") and module.lora_A:
            adapter = next(iter(module.lora_A))
            loaded = module.lora_B[adapter].weight @ module.lora_A[adapter].weight * module.scaling[adapter]
            a, b = native[f"transformer.{module_name}.lora_A.weight"], native[f"transformer.{module_name}.lora_B.weight"]
            torch.testing.assert_close(loaded, b @ a * scale)
            checked += 1
    assert checked >= 8  # every attention projection of both blocks


def test_flow_settings_on_an_sd_model_are_a_clear_error(tiny_model, subject_dir, tmp_path, capsys):
    rc = run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy", "--steps", "1",
                 "--timestep-sampling", "uniform", "--output", tmp_path / "run", *FAST)
    err = capsys.readouterr().err
    assert rc == 2 and "--timestep-sampling" in err and "flow-matching" in err and "Traceback" not in err
