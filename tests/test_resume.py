"""A run SIGKILLed at any point and resumed ends with the weights of an unbroken run."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST

COMMON = ["--steps", "8", "--checkpoint-every", "2", "--keep-checkpoints", "2", "--seed", "3"]
CASES = {
    # prior preservation: two data streams; batch 2 over 3 images: epochs cross batches
    "lora": ["--method", "lora", "--lr", "1e-2", "--prior-preservation", "--num-class-images", "3",
             "--batch-size", "2", "--lr-scheduler", "cosine"],
    "textual_inversion": ["--method", "textual_inversion", "--lr", "5e-2"],
    # every UNet weight, text encoder too: the largest optimizer state
    "full": ["--method", "full", "--lr", "1e-3", "--train-text-encoder", "--gradient-accumulation-steps", "2"],
    "dora": ["--method", "dora", "--lr", "1e-2", "--rank", "2", "--train-text-encoder"],
    "loha": ["--method", "loha", "--lr", "1e-2", "--rank", "2"],
    "lokr": ["--method", "lokr", "--lr", "1e-2", "--rank", "2", "--train-text-encoder"],
    "krona": ["--method", "krona", "--lr", "1e-2", "--krona-a2", "8"],
    "tlora": ["--method", "tlora", "--lr", "1e-2"],
    # the embedding freezes at 3, before the kill and the checkpoint the resume starts from (4)
    "pivotal": ["--method", "pivotal", "--lr", "1e-2", "--rank", "2", "--freeze-embedding-at", "3"],
    # the seed papers' loss terms: SPL (pooled text of the trained token) and DomainStudio (its own
    # draws per step) on pivotal tuning; RPO (negatives made once, labels drawn per step) on LoRA,
    # rewarded by the shipped toy evaluator
    "terms": ["--method", "pivotal", "--lr", "1e-2", "--rank", "2", "--spl-weight", "1", "--domainstudio-weight",
              "1", "--prior-preservation", "--num-class-images", "3", "--batch-size", "3"],
    "rpo": ["--method", "lora", "--lr", "1e-2", "--rank", "2", "--rpo-weight", "1", "--rpo-images-per-prompt", "1",
            "--metrics", "toyworld"],
    # HiFi Tuner's vectors on top of a LoRA (two lr groups), with its mask-free loss and regulariser
    "hifi": ["--method", "hifi", "--lr", "5e-2", "--hifi-base", "lora", "--rank", "2", "--hifi-base-lr", "1e-2",
             "--hifi-stepwise-steps", "0"],
    # the image adapter beside the LoRA; mirrored photos have features of their own; the toy
    # evaluator as image encoder (shipped, no download)
    "disenbooth": ["--method", "disenbooth", "--lr", "1e-2", "--rank", "2", "--flip", "--prior-preservation",
                   "--num-class-images", "2", "--disenbooth-image-encoder", "toyworld"],
}
RESULT_FILES = {"lora": ["pytorch_lora_weights.safetensors"], "dora": ["pytorch_lora_weights.safetensors"],
                "textual_inversion": ["learned_embeds.safetensors"], "krona": ["krona_weights.safetensors"],
                "tlora": ["tlora_weights.safetensors"],
                "loha": ["adapter/unet/adapter_model.safetensors"],
                "pivotal": ["pytorch_lora_weights.safetensors", "learned_embeds.safetensors"],
                "disenbooth": ["pytorch_lora_weights.safetensors", "disenbooth_adapter.safetensors"],
                "hifi": ["pytorch_lora_weights.safetensors", "hifi_vectors.safetensors"],
                "terms": ["pytorch_lora_weights.safetensors", "learned_embeds.safetensors"],
                "rpo": ["pytorch_lora_weights.safetensors"],
                "lokr": ["adapter/unet/adapter_model.safetensors", "adapter/text_encoder/adapter_model.safetensors"]}


def train(model, images, out, extra, kill=None, resume=False):
    env = dict(os.environ)
    env.pop("IMPRINT_TEST_KILL", None)
    if kill:
        env["IMPRINT_TEST_KILL"] = kill
    args = [sys.executable, "-m", "imprint.cli", "train", "--model", str(model), "--images",
            str(images), "--class-name", "toy", "--output", str(out), *FAST, *COMMON, *extra]
    if resume:
        args.append("--resume")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def final_weights(run, method):
    if method == "full":
        return {**load_file(run / "unet" / "diffusion_pytorch_model.safetensors"),
                **{f"te.{k}": v for k, v in load_file(run / "text_encoder" / "model.safetensors").items()}}
    return {f"{name}:{k}": v for name in RESULT_FILES[method] for k, v in load_file(run / name).items()}


def logged_steps(run):
    import json

    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method,kill", [("lora", "step:5"), ("textual_inversion", "checkpoint:4"),
                                         ("full", "step:3"), ("dora", "step:5"), ("loha", "step:3"),
                                         ("lokr", "step:5"), ("krona", "step:5"), ("tlora", "step:5"),
                                         ("pivotal", "step:5"), ("disenbooth", "step:5"),
                                         ("hifi", "step:5"), ("terms", "step:5"), ("rpo", "step:5")])
def test_kill_and_resume_equals_unbroken(method, kill, tiny_model, subject_dir, tmp_path):
    extra = CASES[method]
    unbroken = train(tiny_model, subject_dir, tmp_path / "unbroken", extra)
    assert unbroken.returncode == 0, unbroken.stderr

    broken = tmp_path / "broken"
    killed = train(tiny_model, subject_dir, broken, extra, kill=kill)
    assert killed.returncode == -9, killed.stderr  # really killed, mid-run
    assert not (broken / "metadata.json").exists()
    if kill == "step:5":
        assert logged_steps(broken) == [1, 2, 3, 4, 5]  # step 5 is past the last checkpoint (4)
    if kill.startswith("checkpoint"):
        # killed inside the checkpoint write: only a temporary folder, never a half checkpoint
        assert list((broken / "checkpoints").glob(".tmp-*"))
        assert not (broken / "checkpoints" / "checkpoint-4").exists()
    resumed = train(tiny_model, subject_dir, broken, extra, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert logged_steps(broken) == list(range(1, 9))  # each step once: the killed run's step 5 was cut

    a, b = final_weights(tmp_path / "unbroken", method), final_weights(broken, method)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # and training did move the weights (the comparison is not between two untouched inits)
    assert len(list((broken / "checkpoints").glob("checkpoint-*"))) == 2  # last K kept


def test_output_with_a_run_needs_resume(tiny_model, subject_dir, tmp_path):
    out = tmp_path / "run"
    killed = train(tiny_model, subject_dir, out, CASES["textual_inversion"], kill="step:3")
    assert killed.returncode == -9
    again = train(tiny_model, subject_dir, out, CASES["textual_inversion"])
    assert again.returncode == 2 and "--resume" in again.stderr
    assert "Traceback" not in again.stderr
    assert (out / "checkpoints" / "checkpoint-2").is_dir()  # nothing lost


def test_resume_of_a_run_from_before_a_new_setting(tiny_model, subject_dir, tmp_path):
    """A run started before a config key existed resumes (the key had its default); a changed
    setting is still refused."""
    import json

    out = tmp_path / "run"
    assert train(tiny_model, subject_dir, out, CASES["textual_inversion"], kill="step:3").returncode == -9
    saved = json.loads((out / "config.json").read_text())
    del saved["lr_warmup_steps"]
    (out / "config.json").write_text(json.dumps(saved))
    changed = train(tiny_model, subject_dir, out, [*CASES["textual_inversion"], "--lr-warmup-steps", "2"],
                    resume=True)
    assert changed.returncode == 2 and "lr_warmup_steps" in changed.stderr
    assert train(tiny_model, subject_dir, out, CASES["textual_inversion"], resume=True).returncode == 0
