"""RPO's preference loss: the formula on fixed tensors, the term inside the objective (with the
frozen model's errors), the negatives (made once, cached, scored), the rows a step draws, and
the settings it refuses."""

import math

import pytest
import torch

from conftest import draw_subject
from imprint.objectives import Batch, Objective
from imprint.objectives.denoise import Denoise
from imprint.objectives.rpo import Preference, PreferenceSettings, preference_loss
from imprint.util.errors import ImprintError


def test_preference_loss_against_a_direct_computation():
    theta_w, ref_w = torch.tensor([0.10, 0.30]), torch.tensor([0.20, 0.25])
    theta_l, ref_l = torch.tensor([0.40, 0.10]), torch.tensor([0.35, 0.30])
    labels = torch.tensor([1.0, 0.0])
    for beta in (1.0, 5.0):
        delta = [(0.20 - 0.10) - (0.35 - 0.40), (0.25 - 0.30) - (0.30 - 0.10)]  # 0.15, -0.25

        def logsig(x):
            return -math.log1p(math.exp(-x))

        direct = -(logsig(beta * delta[0]) + logsig(-beta * delta[1])) / 2
        torch.testing.assert_close(preference_loss(theta_w, ref_w, theta_l, ref_l, labels, beta),
                                   torch.tensor(direct), rtol=1e-5, atol=1e-6)


class FrozenFamily:
    """What the objective asks of a family here: the frozen model's prediction."""

    def __init__(self, reference):
        self.reference = reference

    def reference_prediction(self, noisy, timesteps, conditioning):
        return self.reference


def test_the_term_pairs_each_negative_with_its_subject_row():
    torch.manual_seed(0)
    target, prediction, reference = (torch.randn(5, 4, 2, 2) for _ in range(3))
    roles = ["instance", "instance", "negative", "negative", "class"]
    batch = Batch(latents=target, noise=target, timesteps=torch.zeros(5), noisy=target, target=target,
                  conditioning={}, roles=roles,
                  extras={"preference_pair": torch.tensor([-1, -1, 1, 0, -1]),
                          "preference_label": torch.tensor([-1.0, -1.0, 1.0, 0.0, -1.0])})
    objective = Objective([Denoise(), Preference(PreferenceSettings(rpo_weight=2.0))])
    parts = objective.losses(batch, FrozenFamily(reference), prediction)
    e_theta = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    e_ref = ((reference - target) ** 2).mean(dim=(1, 2, 3))
    direct = 2.0 * preference_loss(e_theta[[1, 0]], e_ref[[1, 0]], e_theta[[2, 3]], e_ref[[2, 3]],
                                   torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(parts["rpo"], direct)
    torch.testing.assert_close(parts["denoise"], e_theta[:2].mean())  # negatives are not denoising rows


def rpo_config(tiny_model, folder, output, dino, clip, **more):
    from imprint.image.settings import build_config

    return build_config({}, {"model": str(tiny_model), "images": str(folder), "class_name": "toy",
                             "output": str(output), "resolution": 32, "batch_size": 2, "rpo_weight": 1.0,
                             "rpo_images_per_prompt": 1, "rpo_inference_steps": 2, "dino_model": str(dino),
                             "clip_model": str(clip), **more})


def test_negatives_rows_and_cache(tiny_model, metric_models, tmp_path, monkeypatch):
    from imprint.core.precision import make_accelerator
    from imprint.families.sd import StableDiffusionFamily
    from imprint.image.data import load_subject_images
    from imprint.image.train import SubjectTask

    folder = tmp_path / "subject"
    folder.mkdir()
    for i in range(2):
        draw_subject(folder / f"{i}.png", i)
    cfg = rpo_config(tiny_model, folder, tmp_path / "run", *metric_models)
    subject = load_subject_images(folder, 32)
    task = SubjectTask(cfg, make_accelerator("no"), subject)
    neg = task.negatives
    assert len(neg.prompts) == len(neg.templates) == 8  # one per training prompt
    assert all("sks toy" in p for p in neg.prompts) and neg.subject_rewards.shape == (2, 8)
    assert ((0 <= neg.rewards) & (neg.rewards <= 1)).all()
    for step in range(3):
        batch = task.batches(step, 0)[0]
        assert batch.roles == ["instance", "instance", "negative", "negative"]
        pair = batch.extras["preference_pair"]
        for row in (2, 3):  # a negative shares its subject row's noise and timestep
            torch.testing.assert_close(batch.noise[row], batch.noise[int(pair[row])])
            assert batch.timesteps[row] == batch.timesteps[int(pair[row])]
        assert set(batch.captions[2:]) <= set(neg.prompts)
        again = task.batches(step, 0)[0]  # drawn from (seed, step): a resumed run draws the same
        assert torch.equal(batch.extras["preference_label"], again.extras["preference_label"])
        loss, parts = task.loss(step, 0)
        assert torch.isfinite(loss) and set(parts) == {"loss_denoise", "loss_rpo"}
    # made once: a second run of the same settings reads them from the cache
    monkeypatch.setattr(StableDiffusionFamily, "pipeline", lambda self: pytest.fail("negatives made again"))
    again = SubjectTask(rpo_config(tiny_model, folder, tmp_path / "run2", *metric_models), make_accelerator("no"),
                        subject)
    torch.testing.assert_close(again.negatives.mean, neg.mean)


def test_label_probability_is_the_sigmoid_of_the_reward_gap():
    from imprint.image.preference import Negatives

    neg = Negatives(["a", "b"], torch.tensor([0, 1, 1]), torch.zeros(3), torch.zeros(3),
                    rewards=torch.tensor([0.2, 0.5, 0.9]), subject_rewards=torch.tensor([[0.6, 0.7], [0.1, 0.3]]))
    p = neg.label_probability(torch.tensor([0, 1, 1]), torch.tensor([0, 2, 1]))
    torch.testing.assert_close(p, torch.sigmoid(torch.tensor([0.6 - 0.2, 0.3 - 0.9, 0.3 - 0.5])))


def test_rpo_refusals(tiny_model, metric_models, tmp_path):
    with pytest.raises(ImprintError, match="--method textual_inversion cannot: use lora"):
        rpo_config(tiny_model, tmp_path, tmp_path / "r", *metric_models, method="textual_inversion")
    with pytest.raises(ImprintError, match="drop --buckets"):
        rpo_config(tiny_model, tmp_path, tmp_path / "r", *metric_models, buckets=True, resolution=64)


def test_rpo_end_to_end(tiny_model, metric_models, tmp_path):
    import json

    from conftest import FAST, run_cli

    folder = tmp_path / "subject"
    folder.mkdir()
    draw_subject(folder / "0.png", 0)
    dino, clip = metric_models
    assert run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST, "--steps", "2",
                   "--checkpoint-every", "0", "--no-final-samples", "--output", tmp_path / "run", "--rpo-weight", "1",
                   "--rpo-images-per-prompt", "1", "--rpo-inference-steps", "2", "--dino-model", dino,
                   "--clip-model", clip) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(e["loss"] == pytest.approx(e["loss_denoise"] + e["loss_rpo"], rel=1e-5) for e in log)
