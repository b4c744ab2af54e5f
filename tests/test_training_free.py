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
