"""HiFi Tuner's subject vectors: written over the prompt's last vectors (subject rows only),
their pull to the null text's, resume state, and the result in a pipeline."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, photo_folder, run_cli
from imprint.methods.hifi import with_subject_vectors


def test_vectors_replace_the_last_ones():
    embeds = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    vectors = -torch.ones(2, 3)
    out = with_subject_vectors(embeds, vectors)
    torch.testing.assert_close(out[:, :2], embeds[:, :2])
    torch.testing.assert_close(out[:, 2:], -torch.ones(2, 2, 3))


def test_task_conditions_subject_rows_and_regularises(tiny_model, tmp_path):
    from imprint.core.precision import make_accelerator
    from imprint.image.data import load_subject_images
    from imprint.image.settings import build_config
    from imprint.image.train import SubjectTask

    folder = photo_folder(tmp_path, 2)
    cfg = build_config({}, {"model": str(tiny_model), "images": str(folder), "class_name": "toy", "method": "hifi",
                            "output": str(tmp_path / "run"), "resolution": 32, "batch_size": 2,
                            "prior_preservation": True, "num_class_images": 2, "class_inference_steps": 2})
    assert cfg.trainer.lr == 5e-3  # the paper's
    task = SubjectTask(cfg, make_accelerator("no"), load_subject_images(folder, 32))
    family, method = task.family, task.method
    null = family.encode_prompts(family.tokenize([""]))["prompt_embeds"][0, -5:]
    torch.testing.assert_close(method.vectors.detach(), null)  # c_s starts as phi_s
    loss, parts = task.loss(0, 0)
    assert parts["loss_hifi_regularization"] == 0
    with torch.no_grad():
        method.vectors.add_(0.5)
    torch.testing.assert_close(method.regularization(), torch.tensor(1e-2 * 0.25))
    batch = task.batches(0, 0)[0]
    conditioned = method.condition_subject_rows(batch.conditioning, batch.rows("instance"))["prompt_embeds"]
    for row, role in enumerate(batch.roles):
        expected = method.vectors if role == "instance" else batch.conditioning["prompt_embeds"][row, -5:]
        torch.testing.assert_close(conditioned[row, -5:], expected.detach().to(conditioned))
        torch.testing.assert_close(conditioned[row, :-5], batch.conditioning["prompt_embeds"][row, :-5])
    loss.backward()
    assert method.vectors.grad is not None and method.vectors.grad.abs().sum() > 0


def test_hifi_end_to_end_generates_with_its_vectors(tiny_model, tmp_path):
    from imprint.image.generate import load_run_pipeline

    folder = photo_folder(tmp_path, 2)
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST, "--steps", "3",
                   "--checkpoint-every", "0", "--no-final-samples", "--method", "hifi", "--lr", "0.5",
                   "--hifi-stepwise-steps", "0", "--output", run) == 0
    vectors = load_file(run / "hifi_vectors.safetensors")["subject_vectors"]
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["trainable_parameters"] == vectors.numel() == 5 * vectors.shape[1]
    pipe, _, _ = load_run_pipeline(run)
    positive, negative = pipe.encode_prompt("a photo of sks toy", "cpu", 1, True, "")
    torch.testing.assert_close(positive[0, -5:], vectors)
    assert not torch.allclose(negative[0, -5:], vectors)  # the negative prompt keeps its own
    assert run_cli("generate", "--run", run, "a sks toy on the beach", "--num-images", "1",
                   "--inference-steps", "2", "--output", tmp_path / "out") == 0
    assert (tmp_path / "out" / "00-00.png").exists()


def test_stepwise_vectors_are_refined_and_used_at_their_step(tiny_model, tmp_path):
    from imprint.image.generate import load_run_pipeline
    from imprint.image.sampling import sample
    from imprint.methods.hifi import nearest

    folder = photo_folder(tmp_path, 2)
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST, "--steps", "2",
                   "--checkpoint-every", "0", "--no-final-samples", "--method", "hifi", "--lr", "0.5",
                   "--hifi-stepwise-steps", "3", "--hifi-stepwise-iterations", "2", "--output", run) == 0
    tensors = load_file(run / "hifi_vectors.safetensors")
    timesteps, stepwise = tensors["stepwise_timesteps"], tensors["stepwise_vectors"]
    assert timesteps.shape == (3,) and stepwise.shape == (3, *tensors["subject_vectors"].shape)
    assert (timesteps[:-1] > timesteps[1:]).all()  # refined from the highest timestep down
    assert not torch.allclose(stepwise[0], stepwise[-1])  # each timestep its own
    pipe, _, _ = load_run_pipeline(run)
    seen = []
    pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((int(args[1]), kwargs["encoder_hidden_states"].clone())),
        with_kwargs=True)
    sample(pipe, ["a photo of sks toy"], 32, 0, 3)
    assert len(seen) >= 3  # one forward per sampler step (the solver may add one)
    for t, hidden in seen:  # [negative, positive]: the positive row has the nearest timestep's vectors
        torch.testing.assert_close(hidden[1, -5:], stepwise[nearest(timesteps, t)])


def test_hifi_on_lora_trains_both_and_refines_the_vectors_alone(tiny_model, tmp_path):
    """--hifi-base lora: the LoRA at its own lr beside the vectors; the step-wise refinement leaves the
    LoRA as trained (the same file as a run without it); the pipeline gets LoRA and vectors."""
    from imprint.image.generate import load_run_pipeline
    from imprint.image.settings import build_config
    from imprint.methods import METHODS

    folder = photo_folder(tmp_path, 2)
    cfg = build_config({}, {"model": "m", "images": "i", "class_name": "toy", "output": "o", "method": "hifi",
                            "hifi_base": "lora"})
    assert cfg.method.hifi_base_lr == METHODS["lora"].default_lr and cfg.trainer.lr == 5e-3
    common = ["--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST, "--steps", "3",
              "--checkpoint-every", "0", "--no-final-samples", "--method", "hifi", "--hifi-base", "lora", "--rank", "2",
              "--hifi-base-lr", "1e-2", "--lr", "0.5"]
    assert run_cli("train", *common, "--hifi-stepwise-steps", "0", "--output", tmp_path / "plain") == 0
    assert run_cli("train", *common, "--hifi-stepwise-steps", "2", "--hifi-stepwise-iterations", "2",
                   "--output", tmp_path / "stepwise") == 0
    plain, stepwise = tmp_path / "plain", tmp_path / "stepwise"
    lora_a, lora_b = (load_file(run / "pytorch_lora_weights.safetensors") for run in (plain, stepwise))
    assert lora_a.keys() == lora_b.keys() and any(k.endswith("lora_B.weight") for k in lora_a)
    for key in lora_a:
        torch.testing.assert_close(lora_a[key], lora_b[key])
    assert any(lora_a[k].abs().sum() > 0 for k in lora_a if k.endswith("lora_B.weight"))  # trained
    vectors = load_file(stepwise / "hifi_vectors.safetensors")
    torch.testing.assert_close(vectors["subject_vectors"], load_file(plain / "hifi_vectors.safetensors")["subject_vectors"])
    assert not torch.allclose(vectors["stepwise_vectors"][-1], vectors["subject_vectors"])  # refined
    meta = json.loads((plain / "metadata.json").read_text())
    assert meta["trainable_parameters"] == sum(v.numel() for v in lora_a.values()) + vectors["subject_vectors"].numel()

    pipe, _, _ = load_run_pipeline(plain)
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())
    positive, _ = pipe.encode_prompt("a photo of sks toy", "cpu", 1, True, "")
    torch.testing.assert_close(positive[0, -5:], load_file(plain / "hifi_vectors.safetensors")["subject_vectors"])


def test_hifi_on_full_fine_tuning_and_text_encoder_needs_a_base(tiny_model, tmp_path):
    from imprint.image.generate import load_run_pipeline
    from imprint.image.settings import build_config
    from imprint.util.errors import ImprintError

    with pytest.raises(ImprintError, match="--hifi-base"):
        build_config({}, {"model": "m", "images": "i", "class_name": "toy", "output": "o", "method": "hifi",
                          "train_text_encoder": True})
    folder = photo_folder(tmp_path, 2)
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST, "--steps", "2",
                   "--checkpoint-every", "0", "--no-final-samples", "--method", "hifi", "--hifi-base", "full",
                   "--hifi-base-lr", "1e-3", "--hifi-stepwise-steps", "0", "--output", run) == 0
    assert (run / "unet" / "diffusion_pytorch_model.safetensors").exists() and (run / "hifi_vectors.safetensors").exists()
    trained = load_file(run / "unet" / "diffusion_pytorch_model.safetensors")
    pipe, _, _ = load_run_pipeline(run)
    name = next(iter(trained))
    torch.testing.assert_close(pipe.unet.state_dict()[name], trained[name])
    base = load_file(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(base[k], trained[k]) for k in trained)  # full fine-tuning moved the UNet
