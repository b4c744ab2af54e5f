"""Per-photo captions, aspect-ratio buckets and --repeats: which bucket each photo gets, that a
batch is one bucket, which prompt each photo trains with, exact resume, and the caption errors."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import FAST, draw_subject, run_cli
from imprint.util.rng import batch_indices
from imprint.image.buckets import Bucket, bucket_for, bucket_sizes, subject_rows
from imprint.image.data import list_image_files, read_captions
from imprint.util.errors import ImprintError

RES = ["--resolution", "64"]  # after FAST: the last --resolution wins


def mixed_folder(root):
    """Three photos, square, landscape and portrait; captions for the first two only."""
    folder = root / "subject"
    folder.mkdir()
    for index, (name, size) in enumerate([("a", (64, 64)), ("b", (96, 64)), ("c", (64, 96))]):
        draw_subject(folder / f"{name}.png", index, size=96)
        Image.open(folder / f"{name}.png").resize(size).save(folder / f"{name}.png")
    (folder / "a.txt").write_text("a {token} {class_name} on grass\n")
    (folder / "b.txt").write_text("a {token} {class_name}\nin the snow")  # lines joined by a space
    return folder


def test_bucket_sizes_and_assignment():
    assert bucket_for(64, 64, 64) == (64, 64)
    assert bucket_for(96, 64, 64) == (80, 48)
    assert bucket_for(64, 96, 64) == (48, 80)
    # at 512 kohya's grid: steps of 64, sides 256..1024, at most 512^2 pixels
    assert bucket_for(4000, 3000, 512) == (576, 448)
    assert bucket_for(1080, 1920, 512) == (384, 640)
    assert bucket_for(3000, 1000, 512) == (832, 256)
    for resolution, step in ((64, 8), (512, 64), (1024, 64)):
        sizes = bucket_sizes(resolution)
        assert (resolution, resolution) in sizes
        for w, h in sizes:
            assert w % step == 0 and h % step == 0 and w * h <= resolution ** 2
            assert resolution // 2 <= min(w, h) and max(w, h) <= 2 * resolution


def buckets(*counts):
    return [Bucket((64, 64), list(range(n)), torch.zeros(n), torch.zeros(n)) for n in counts]


def test_batches_one_bucket_each_and_each_photo_once_an_epoch():
    counts, batch_size = (3, 1, 4), 2
    per_epoch = 2 + 1 + 2  # ceil(3/2) + ceil(1/2) + ceil(4/2)
    drawn = [subject_rows(5, i, batch_size, buckets(*counts), 1, by_bucket=True) for i in range(per_epoch)]
    assert sorted(b for b, _ in drawn) == [0, 0, 1, 2, 2]  # each bucket's share of the steps
    for number in range(3):
        rows = [r for b, rows in drawn if b == number for r in rows]
        assert set(rows) == set(range(counts[number]))  # every photo of the bucket, topped-up batches aside
        assert all(0 <= r < counts[number] for r in rows)
    # a function of (seed, index): what a resumed run draws
    assert subject_rows(5, 7, batch_size, buckets(*counts), 1, True) == subject_rows(5, 7, batch_size, buckets(*counts), 1, True)
    # --repeats 2: each photo twice an epoch
    twice = [r for i in range(8) for r in subject_rows(5, i, 1, buckets(4), 2, by_bucket=True)[1]]
    assert sorted(twice) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_without_buckets_the_rows_are_todays_and_repeats_fill_an_epoch():
    for index in range(7):
        assert subject_rows(3, index, 2, buckets(5), 1, by_bucket=False) == (0, batch_indices(3, 1, index, 2, 5))
    rows = [r for i in range(9) for r in subject_rows(3, i, 1, buckets(3), 3, by_bucket=False)[1]]
    assert sorted(rows) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_caption_files_are_not_warned_about_and_bad_ones_are_errors(tmp_path, caplog):
    folder = mixed_folder(tmp_path)
    (folder / "class.txt").write_text("toy")  # no photo of that name: not a caption
    with caplog.at_level(logging.WARNING, logger="imprint"):
        paths = list_image_files(folder)
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    assert "class.txt" in caplog.text and "a.txt" not in caplog.text
    assert read_captions(paths) == ["a {token} {class_name} on grass", "a {token} {class_name} in the snow", None]
    (folder / "c.txt").write_bytes(b"\xff\xfe caption in UTF-16")
    with pytest.raises(ImprintError, match=r"c\.txt: caption file is not UTF-8"):
        read_captions(paths)


def test_task_buckets_batches_and_prompts(tiny_model, tmp_path):
    from imprint.core.precision import make_accelerator
    from imprint.image.data import load_subject_images
    from imprint.image.settings import build_config
    from imprint.image.train import SubjectTask, checked_captions

    folder = mixed_folder(tmp_path)
    cfg = build_config({}, {"model": str(tiny_model), "images": str(folder), "class_name": "toy",
                            "output": str(tmp_path / "run"), "resolution": 64, "buckets": True, "batch_size": 2,
                            "prior_preservation": True, "num_class_images": 2, "class_inference_steps": 2})
    subject = load_subject_images(folder, 64)
    task = SubjectTask(cfg, make_accelerator("no"), subject, checked_captions(cfg, subject))
    assert {b.size: b.images for b in task.buckets} == {(48, 80): [2], (64, 64): [0], (80, 48): [1]}
    assert task.image_prompts == ["a sks toy on grass", "a sks toy in the snow", "a photo of sks toy"]
    assert len(task.prompts) == 4  # 3 photo prompts + the class prompt, each encoded once
    factor = 64 // task.class_mean.shape[-1]  # pixels per latent
    seen = set()
    for step in range(6):
        number, rows = subject_rows(cfg.trainer.seed, step, 2, task.buckets, 1, by_bucket=True)
        bucket = task.buckets[number]
        seen.add(bucket.size)
        batches = task.batches(step, 0)
        subject_batch = batches[0]
        width, height = bucket.size
        assert subject_batch.latents.shape[-2:] == (height // factor, width // factor)
        instance = [c for c, r in zip(subject_batch.captions, subject_batch.roles) if r == "instance"]
        assert instance == [task.image_prompts[bucket.images[r]] for r in rows]  # each row its photo's prompt
        assert subject_batch.conditioning["prompt_embeds"].shape[0] == len(subject_batch.roles)
        # class rows are square: with the square bucket in the same batch, beside it otherwise
        assert len(batches) == (1 if bucket.size == (64, 64) else 2)
        assert batches[-1].roles[-2:] == ["class", "class"] and batches[-1].latents.shape[-1] == 64 // factor
        loss, parts = task.loss(step, 0)
        assert torch.isfinite(loss) and set(parts) == {"loss_denoise", "loss_prior"}
    assert seen == {(48, 80), (64, 64), (80, 48)}


def train(model, images, out, kill=None, resume=False):
    env = {k: v for k, v in os.environ.items() if k != "IMPRINT_TEST_KILL"}
    if kill:
        env["IMPRINT_TEST_KILL"] = kill
    args = [sys.executable, "-m", "imprint.cli", "train", "--model", str(model), "--images", str(images),
            "--class-name", "toy", "--output", str(out), *FAST, *RES, "--buckets", "--steps", "4",
            "--checkpoint-every", "2", "--seed", "1", "--lr", "1e-2", "--batch-size", "2", "--repeats", "2",
            "--train-text-encoder", "--prior-preservation", "--num-class-images", "2", "--no-final-samples"]
    return subprocess.run(args + (["--resume"] if resume else []), env=env, capture_output=True, text=True,
                          timeout=300)


def test_kill_and_resume_with_buckets_and_captions_equals_unbroken(tiny_model, tmp_path):
    """Captions re-encoded each step by the trained text encoder, two shapes a step, resumed exactly."""
    folder = mixed_folder(tmp_path)
    unbroken = train(tiny_model, folder, tmp_path / "unbroken")
    assert unbroken.returncode == 0, unbroken.stderr
    assert "captions: 2 of 3 subject images" in unbroken.stderr and "aspect-ratio buckets" in unbroken.stderr
    broken = tmp_path / "broken"
    assert train(tiny_model, folder, broken, kill="step:3").returncode == -9
    resumed = train(tiny_model, folder, broken, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    log = [json.loads(line) for line in (broken / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    assert all(e["loss"] == pytest.approx(e["loss_denoise"] + e["loss_prior"], rel=1e-5) for e in log)
    a = load_file(tmp_path / "unbroken" / "pytorch_lora_weights.safetensors")
    b = load_file(broken / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("text_encoder") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_empty_caption_is_a_one_line_error(tiny_model, tmp_path, capsys):
    folder = mixed_folder(tmp_path)
    (folder / "c.txt").write_text("  \n")
    rc = run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", "--steps", "2",
                 "--output", tmp_path / "run", *FAST)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("imprint: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(folder / "c.txt") in lines[0] and "empty caption file" in lines[0] and "--instance-prompt" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written
    # a bad placeholder, and --buckets at a resolution off the bucket grid, likewise
    (folder / "c.txt").write_text("a {tokn} toy")
    rc = run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", "--output",
                 tmp_path / "run", *FAST)
    assert rc == 2 and "c.txt: bad placeholder 'tokn'" in capsys.readouterr().err
    rc = run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", "--buckets",
                 "--output", tmp_path / "run", *FAST)
    assert rc == 2 and "--resolution 32: with --buckets it must be a multiple of 64" in capsys.readouterr().err
