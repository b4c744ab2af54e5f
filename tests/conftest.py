"""Fixtures: tiny Stable Diffusion models saved as diffusers folders, and subject folders."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
# downscaled copies of 5 DreamBench subjects, shipped with the repo (see its README.md)
DREAMBENCH = REPO / "tests" / "data" / "dreambench"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # class images go to a per-test cache, never to the user's ~/.cache
    monkeypatch.setenv("IMPRINT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from imprint.tiny import save_sd_model

    return save_sd_model(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0, warm_up_steps=40)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    from imprint.tiny import build_sdxl_pipeline, save_pipeline

    return save_pipeline(build_sdxl_pipeline(seed=0), tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    from imprint.tiny import build_flux_pipeline, save_pipeline

    return save_pipeline(build_flux_pipeline(seed=0), tmp_path_factory.mktemp("models") / "tiny-flux")


@pytest.fixture(scope="session")
def tiny_flux_fill(tmp_path_factory) -> Path:
    from imprint.tiny import build_flux_pipeline, save_pipeline

    return save_pipeline(build_flux_pipeline(seed=0, fill=True), tmp_path_factory.mktemp("models") / "tiny-flux-fill")


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    from imprint.tiny import build_sd3_pipeline, save_pipeline

    return save_pipeline(build_sd3_pipeline(seed=0), tmp_path_factory.mktemp("models") / "tiny-sd3")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny Llama with the tiny chat tokenizer (imprint.tiny), saved once for the session."""
    from imprint.tiny import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def other_model(tmp_path_factory) -> Path:
    """A tiny SD model of another architecture (wider cross-attention)."""
    from imprint.tiny import save_sd_model

    return save_sd_model(tmp_path_factory.mktemp("models") / "other-sd", seed=1, cross_dim=64,
                         te_hidden=64)


def draw_subject(path: Path, index: int, size: int = 48) -> Path:
    """A red-and-yellow toy on a varying background: a subject the tests can learn."""
    image = Image.new("RGB", (size, size), (40 + 30 * index, 120, 200 - 20 * index))
    draw = ImageDraw.Draw(image)
    x = 6 + 3 * index
    draw.ellipse((x, 10, x + 26, 36), fill=(220, 30, 30))
    draw.rectangle((x + 8, 18, x + 18, 28), fill=(250, 220, 0))
    image.save(path)
    return path


def photo_folder(root: Path, count: int) -> Path:
    """root/subject with `count` drawn photos."""
    folder = root / "subject"
    folder.mkdir(parents=True)
    for i in range(count):
        draw_subject(folder / f"{i}.png", i)
    return folder


@pytest.fixture
def subject_dir(tmp_path) -> Path:
    folder = tmp_path / "subject"
    folder.mkdir()
    for i in range(3):
        draw_subject(folder / f"{i:02d}.png", i)
    return folder


def run_cli(*args: str) -> int:
    from imprint.cli import main

    return main([str(a) for a in args])


FAST = ["--resolution", "32", "--class-inference-steps", "2", "--sample-inference-steps", "2"]


def train_tiny_run(root: Path, model: Path, *flags) -> Path:
    """A finished run of the tiny model on a drawn subject in root/run."""
    (root / "subject").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        draw_subject(root / "subject" / f"{i}.png", i)
    assert run_cli("train", "--model", model, "--images", root / "subject", "--class-name", "toy",
                   "--checkpoint-every", "0", "--output", root / "run", *FAST, *flags) == 0
    return root / "run"


@pytest.fixture(scope="session")
def lora_run(tiny_model, tmp_path_factory) -> Path:
    """LoRA on UNet and text encoder, alpha != rank: the scale alpha / rank must survive every file format."""
    return train_tiny_run(tmp_path_factory.mktemp("lora"), tiny_model, "--rank", "2", "--alpha", "8",
                          "--train-text-encoder", "--lr", "1e-2", "--steps", "5")


@pytest.fixture(scope="session")
def metric_models(tmp_path_factory):
    """Tiny random DINO-style ViT and CLIP, saved with their processors like the hub models."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, ViTConfig,
                              ViTImageProcessor, ViTModel)

    from imprint.tiny import build_tokenizer

    root = tmp_path_factory.mktemp("metric-models")
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=37), add_pooling_layer=False)
    vit.save_pretrained(root / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    tokenizer = build_tokenizer(root / "tok")
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                         pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>")),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16))
    clip.save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(root / "clip")
    return root / "dino", root / "clip"
