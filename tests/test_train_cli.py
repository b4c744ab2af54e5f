"""Each method end to end through the CLI: train, files, generate, differs from the base."""

import json

import numpy as np
import torch
import pytest
from PIL import Image

from conftest import FAST, run_cli

CASES = {
    "lora": (["--lr", "1e-2"], ["pytorch_lora_weights.safetensors"]),
    "lora_te": (["--lr", "1e-2", "--train-text-encoder", "--rank", "2", "--alpha", "6"],
                ["pytorch_lora_weights.safetensors"]),
    "full": (["--lr", "1e-3", "--train-text-encoder"], ["unet", "text_encoder"]),
    "textual_inversion": (["--lr", "5e-2", "--num-vectors", "2"], ["learned_embeds.safetensors"]),
}


def base_images(model, tmp_path, prompt):
    from imprint.families import load_pipeline
    from imprint.image.sampling import sample

    return sample(load_pipeline(str(model)), [prompt], 32, 0, 2, images_per_prompt=2)


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_end_to_end(case, tiny_model, subject_dir, tmp_path):
    flags, files = CASES[case]
    method = "lora" if case.startswith("lora") else case
    run = tmp_path / "run"
    rc = run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy",
                 "--method", method, "--steps", "6", "--checkpoint-every", "3", "--sample-every", "3",
                 "--output", run, *FAST, *flags)
    assert rc == 0
    for name in files + ["metadata.json", "samples/step-000003.png", "samples/step-000006.png"]:
        assert (run / name).exists(), name
    metadata = json.loads((run / "metadata.json").read_text())
    assert metadata["method"] == method and metadata["steps"] == 6
    assert metadata["token"] == "sks" and metadata["class_name"] == "toy"
    assert metadata["imprint_version"] and metadata["hyperparameters"]["resolution"] == 32

    out = tmp_path / "gen"
    assert run_cli("generate", "--run", run, "a photo of sks toy", "--num-images", "2",
                   "--inference-steps", "2", "--output", out) == 0
    generated = [np.asarray(Image.open(out / f"00-0{j}.png"), float) for j in range(2)]
    assert (out / "grid.png").exists()
    # the run's images differ from the base model's for the same prompt and seed
    prompt = "a photo of sks toy" if method != "textual_inversion" else "a photo of sks toy"
    base = [np.asarray(im, float) for im in base_images(tiny_model, tmp_path, prompt)]
    assert max(np.abs(g - b).mean() for g, b in zip(generated, base)) > 0.5


def test_textual_inversion_uses_new_token(tiny_model, subject_dir, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy",
                   "--method", "textual_inversion", "--token", "zq", "--steps", "2",
                   "--checkpoint-every", "0", "--output", run, *FAST) == 0
    metadata = json.loads((run / "metadata.json").read_text())
    # the byte-level tokenizer knows no word "zq", so the token itself is the new entry
    assert metadata["placeholder"] == "zq" and metadata["prompt_token"] == "zq"


@pytest.mark.parametrize("method", ["lora", "full", "textual_inversion"])
def test_bf16_mixed_precision(method, tiny_model, subject_dir, tmp_path):
    run = tmp_path / "run"
    text_encoder = [] if method == "textual_inversion" else ["--train-text-encoder"]  # TI trains it anyway
    assert run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy",
                   "--method", method, "--mixed-precision", "bf16", *text_encoder,
                   "--prior-preservation", "--num-class-images", "2", "--steps", "2",
                   "--checkpoint-every", "0", "--output", run, *FAST) == 0
    assert (run / "samples" / "step-000002.png").is_file()
    if method == "lora":
        from safetensors.torch import load_file

        weights = load_file(run / "pytorch_lora_weights.safetensors")
        assert all(v.dtype == torch.float32 for v in weights.values())  # adapters train in fp32


def test_fp16_on_cpu_is_a_clear_error(tiny_model, subject_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy",
                 "--mixed-precision", "fp16", "--steps", "1", "--output", tmp_path / "run", *FAST)
    err = capsys.readouterr().err
    assert rc == 2 and "--mixed-precision fp16" in err and "bf16" in err
