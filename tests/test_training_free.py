"""Generation-time subject methods: DreamTuner's self-subject-attention against its formula,
transparent when its weight is 0, through `imprint generate --with` on the base model and on a run."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli


def test_self_subject_attention_is_the_papers_formula():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from imprint.image.self_subject_attention import SelfSubjectAttnProcessor, SubjectFeatures

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    z, z_r = torch.randn(2, 4, 8), torch.randn(2, 4, 8)  # 2x2 tokens, the latent 2x2 too
    mask = torch.tensor([[[[1.0, 0.0], [0.5, 1.0]]]])  # the reference's subject share per token
    state = SubjectFeatures()
    state.latent_hw = (2, 2)
    processor = SelfSubjectAttnProcessor("attn1", state, mask, 3.0, AttnProcessor2_0())
    state.recording = True
    processor(attn, z_r)  # the reference pass records its input
    state.recording = False
    with torch.no_grad():
        out = processor(attn, z)
        # softmax(q [k, k_r]^T / sqrt(d) + log m) [v, v_r], m = [1, 3 m_r], per head
        q = attn.to_q(z).view(2, 4, 2, 4).transpose(1, 2)
        k = attn.to_k(torch.cat([z, z_r], 1)).view(2, 8, 2, 4).transpose(1, 2)
        v = attn.to_v(torch.cat([z, z_r], 1)).view(2, 8, 2, 4).transpose(1, 2)
        m = torch.cat([torch.ones(4), 3.0 * mask.flatten()])
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4) + torch.log(m), dim=-1)
        expected = attn.to_out[0]((weights @ v).transpose(1, 2).reshape(2, 4, 8))
    torch.testing.assert_close(out, expected)
    assert weights[..., 5].abs().max() == 0  # a background token of the reference is never attended to


def subject_with_masks(root, count=2):
    from conftest import draw_subject

    folder = root / "subject"
    (folder / "masks").mkdir(parents=True)
    for i in range(count):
        draw_subject(folder / f"{i}.png", i)
        mask = Image.new("L", (48, 48), 0)
        mask.paste(255, (6 + 3 * i, 10, 32 + 3 * i, 36))
        mask.save(folder / "masks" / f"{i}.png")
    return folder


def test_zero_weight_is_plain_generation_and_the_pipeline_is_restored(tiny_model, tmp_path):
    from imprint.families import load_pipeline
    from imprint.image.sampling import sample
    from imprint.image.training_free import install

    pipe = load_pipeline(str(tiny_model))
    subject = subject_with_masks(tmp_path)
    as_array = lambda images: np.stack([np.asarray(i, dtype=np.float64) for i in images])  # noqa: E731
    plain = as_array(sample(pipe, ["a toy"], 32, 0, 3, 2))
    with install("self-subject-attention", pipe, subject, None, 0, 32, 0.0, 0):
        zero = as_array(sample(pipe, ["a toy"], 32, 0, 3, 2))
    with install("self-subject-attention", pipe, subject, None, 1, 32, 3.0, 0):
        on = as_array(sample(pipe, ["a toy"], 32, 0, 3, 2))
    after = as_array(sample(pipe, ["a toy"], 32, 0, 3, 2))
    np.testing.assert_allclose(zero, plain, atol=1.0)  # 8-bit pixels: rounding at most
    np.testing.assert_array_equal(after, plain)
    assert np.abs(on - plain).max() > 2  # beyond 8-bit rounding: the reference changed the image


@pytest.mark.parametrize("model", ["tiny_model", "tiny_sdxl"])
def test_generate_with_self_subject_attention(model, request, tmp_path):
    path = request.getfixturevalue(model)
    subject = subject_with_masks(tmp_path)
    out = tmp_path / "out"
    assert run_cli("generate", "--model", path, "a toy", "--with", "self-subject-attention", "--subject", subject,
                   "--resolution", "32", "--num-images", "1", "--inference-steps", "2", "--output", out) == 0
    assert (out / "00-00.png").is_file()


def test_self_subject_attention_on_a_run(lora_run, tmp_path):
    subject = subject_with_masks(tmp_path)
    assert run_cli("generate", "--run", lora_run, "a sks toy", "--with", "self-subject-attention", "--subject",
                   subject, "--num-images", "1", "--inference-steps", "2", "--output", tmp_path / "out") == 0


def test_training_free_errors(tiny_flux, tiny_model, tmp_path, capsys):
    subject = subject_with_masks(tmp_path)
    rc = run_cli("generate", "--model", tiny_flux, "a toy", "--with", "self-subject-attention", "--subject", subject,
                 "--resolution", "32", "--output", tmp_path / "a")
    err = capsys.readouterr().err
    assert rc == 2 and "UNet" in err and "Traceback" not in err
    (tmp_path / "bare").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "bare" / "0.png")
    rc = run_cli("generate", "--model", tiny_model, "a toy", "--with", "self-subject-attention", "--subject",
                 tmp_path / "bare", "--output", tmp_path / "b")
    err = capsys.readouterr().err
    assert rc == 2 and "--subject-masks" in err
    rc = run_cli("generate", "a toy", "--output", tmp_path / "c")
    assert rc == 2 and "--model" in capsys.readouterr().err


# --- FLUX: FreeCus and Diptych prompting ------------------------------------------------------------
def test_freecus_reference_schedule_is_the_negative_shift():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from imprint.image.freecus import negative_shift_sigma

    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    base = torch.linspace(1, 1 / 30, 30)
    mu = 0.63
    generation = scheduler.time_shift(mu, 1.0, base)
    torch.testing.assert_close(negative_shift_sigma(generation, math.exp(mu)), scheduler.time_shift(-mu, 1.0, base))


def test_flux_processor_is_diffusers_and_freecus_attends_as_the_authors(tiny_flux):
    from imprint.families import load_pipeline
    from imprint.image.flux_attention import FluxProcessor, flux_attention_modules, plain_attention
    from imprint.image.freecus import FreeCus

    pipe = load_pipeline(str(tiny_flux))
    modules = flux_attention_modules(pipe.transformer)
    assert [name for name, _ in modules] == ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 16, 32, generator=g),
                  pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(16, 3), guidance=torch.tensor([3.5]),
                  return_dict=False)
    with torch.no_grad():
        reference = pipe.transformer(**inputs)[0]
        for _, module in modules:
            module.set_processor(FluxProcessor(plain_attention, lambda: 16))
        torch.testing.assert_close(pipe.transformer(**inputs)[0], reference, rtol=1e-5, atol=1e-5)

    # use mode: the stored subject keys (x 1.1 when stored) and values go first, text keys x 1.1
    freecus = FreeCus(pipe, torch.zeros(1, 16, 8, 8), torch.ones(1, 1, 8, 8), layers=[0])
    q, k, v = (torch.randn(2, 5, 2, 4, generator=g) for _ in range(3))  # 2 text + 3 image tokens
    attend = freecus.attend_at(0)
    freecus.foreground = torch.tensor([0, 2])
    freecus.recording = True
    attend(q, k, v, 2)
    freecus.recording = False
    ref_k, ref_v = 1.1 * k[:, 2:][:, [0, 2]], v[:, 2:][:, [0, 2]]
    keys = torch.cat([ref_k, 1.1 * k[:, :2], k[:, 2:]], dim=1)
    values = torch.cat([ref_v, v], dim=1)
    weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, keys) / 2.0, dim=-1)
    expected = torch.einsum("bhqk,bkhd->bqhd", weights, values)
    torch.testing.assert_close(attend(q, k, v, 2), expected)


def test_diptych_attention_enhancement_and_canvas():
    from imprint.image.diptych import diptych_canvas, enhanced_attention
    from imprint.image.flux_attention import plain_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1 + 4, 2, 4, generator=g) for _ in range(3))  # 1 text token, a 1 x 4 image grid
    out = enhanced_attention(1.3, (1, 4))(q, k, v, 1)
    p = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, dim=-1)
    p[:, :, 1 + 2:, 1:1 + 2] *= 1.3  # right-panel image queries to left-panel image keys, not renormalised
    torch.testing.assert_close(out, torch.einsum("bhqk,bkhd->bqhd", p, v))
    torch.testing.assert_close(enhanced_attention(1.0, (1, 4))(q, k, v, 1), plain_attention(q, k, v, 1))

    photo = Image.new("RGB", (8, 8), (200, 10, 10))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))
    canvas, fill = diptych_canvas(photo, mask, 8)
    pixels, filled = np.asarray(canvas), np.asarray(fill)
    assert tuple(pixels[0, 1]) == (200, 10, 10) and tuple(pixels[0, 6]) == (255, 255, 255)  # subject, white
    assert (pixels[:, 8:] == 0).all() and (filled[:, :8] == 0).all() and (filled[:, 8:] == 255).all()


def test_generate_with_freecus_and_diptych(tiny_flux, tiny_flux_fill, tiny_model, tmp_path, capsys):
    subject = subject_with_masks(tmp_path)
    (subject / "class.txt").write_text("toy")
    common = ["a toy on a beach", "--subject", subject, "--resolution", "32", "--num-images", "1",
              "--inference-steps", "2"]
    assert run_cli("generate", "--model", tiny_flux, "--with", "freecus", "--description", "red and round", *common,
                   "--output", tmp_path / "freecus") == 0
    assert run_cli("generate", "--model", tiny_flux_fill, "--with", "diptych", *common,
                   "--output", tmp_path / "diptych") == 0
    with Image.open(tmp_path / "diptych" / "00-00.png") as image:
        assert image.size == (32, 32)  # the right panel less its margin
    rc = run_cli("generate", "--model", tiny_flux, "--with", "diptych", *common, "--output", tmp_path / "x")
    assert rc == 2 and "FluxFillPipeline" in capsys.readouterr().err
    rc = run_cli("generate", "--model", tiny_model, "--with", "freecus", *common, "--output", tmp_path / "y")
    assert rc == 2 and "FLUX" in capsys.readouterr().err
