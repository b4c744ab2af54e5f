"""HiFi Tuner's subject substitution (`imprint edit`): the attention processor changes nothing
until it records or injects, null-text inversion retraces the photo better than plain inversion
under guidance, the token mapping around the swapped words, and the command end to end."""

import pytest
import torch
import torch.nn.functional as F

from conftest import FAST, draw_subject, photo_folder, run_cli
from imprint.image.reference_guidance import Sampler, invert
from imprint.image.substitution import CrossAttentionMaps, null_text_inversion, token_mapping


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.unet.requires_grad_(False)
    return pipe


def test_processor_is_the_plain_attention_until_it_records(pipe):
    torch.manual_seed(0)
    x, hidden = torch.randn(2, 4, 4, 4), torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    before = pipe.unet(x, 500, encoder_hidden_states=hidden).sample
    maps = CrossAttentionMaps()
    maps.install(pipe.unet)
    try:
        torch.testing.assert_close(pipe.unet(x, 500, encoder_hidden_states=hidden).sample, before, rtol=1e-4, atol=1e-5)
        with maps.at("record", 0):
            recorded = pipe.unet(x, 500, encoder_hidden_states=hidden).sample
        torch.testing.assert_close(recorded, before, rtol=1e-4, atol=1e-5)
        assert maps.maps and all(m.shape[-1] == 77 for m in maps.maps.values())
        # injecting every column of the recorded maps back reproduces the same output
        maps.mapping = (torch.arange(77), torch.arange(77))
        with maps.at("inject", 0):
            injected = pipe.unet(x, 500, encoder_hidden_states=hidden).sample
        torch.testing.assert_close(injected, before, rtol=1e-2, atol=1e-3)  # the maps were kept in float16
    finally:
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())


def test_token_mapping_skips_the_subject_words_and_shifts_the_rest(pipe):
    tok = pipe.tokenizer
    n = len(tok("cat", add_special_tokens=False).input_ids)
    m = len(tok("sks toy", add_special_tokens=False).input_ids)
    taken, sources = token_mapping(tok, "a cat on a mat", "a sks toy on a mat", "cat", "sks toy", own_tail=2)
    start = 1 + len(tok("a", add_special_tokens=False).input_ids)
    own = set(range(start, start + m)) | {tok.model_max_length - 2, tok.model_max_length - 1}
    assert set(taken.tolist()) == set(range(tok.model_max_length)) - own
    for j, i in zip(taken.tolist(), sources.tolist()):
        assert i == (j if j < start else j - (m - n))
    with pytest.raises(ValueError):
        token_mapping(tok, "a dog", "a sks toy", "cat", "sks toy")


def test_null_text_inversion_retraces_the_photo_better_than_plain_inversion(pipe):
    # a strong guidance: the tiny model's conditional and unconditional outputs are close, so a
    # usual scale hardly moves the reconstruction off the inverted trajectory
    sampler = Sampler(pipe, "a photo of a toy", "", 4, 50.0)
    with torch.no_grad():
        c_r, _ = pipe.encode_prompt("a photo of a toy", "cpu", 1, False)
    torch.manual_seed(0)
    x0 = torch.randn(1, 4, 4, 4)
    inverted = invert(lambda x, t: pipe.unet(x, t, encoder_hidden_states=c_r).sample, sampler.scheduler, x0)
    maps = CrossAttentionMaps()
    maps.install(pipe.unet)
    try:
        nulls = null_text_inversion(sampler, inverted, x0, c_r, maps, null_steps=10, lr=1e-2)
        timesteps = sampler.scheduler.timesteps.tolist()
        plain = tuned = inverted[timesteps[0]]
        with torch.no_grad():
            for i, t in enumerate(timesteps):
                plain = sampler.step(plain, t, positive=c_r)
                tuned = sampler.step(tuned, t, nulls[i], positive=c_r)
        assert F.mse_loss(tuned, x0) < 0.6 * F.mse_loss(plain, x0)
        assert {step for step, _ in maps.maps} == set(range(4))  # every step's maps recorded
    finally:
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())


def test_edit_end_to_end(tiny_model, tmp_path, capsys):
    folder = photo_folder(tmp_path, 2)
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST, "--steps", "2",
                   "--checkpoint-every", "0", "--no-final-samples", "--method", "hifi", "--hifi-stepwise-steps", "2",
                   "--hifi-stepwise-iterations", "1", "--output", run) == 0
    photo = draw_subject(tmp_path / "photo.png", 3)
    out = tmp_path / "edited.png"
    assert run_cli("edit", "--run", run, "--image", photo, "--source-prompt", "a photo of a ball on the grass",
                   "--replace", "ball", "--inference-steps", "3", "--null-steps", "2", "--output", out) == 0
    assert out.exists()
    code = run_cli("edit", "--run", run, "--image", photo, "--source-prompt", "a photo of a ball", "--replace", "cat",
                   "--output", tmp_path / "x.png")
    assert code != 0 and "--replace" in capsys.readouterr().err
