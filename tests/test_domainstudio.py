"""DomainStudio: the Haar filters, the relative distances and KL on fixed tensors, the x0
formula against diffusers' scheduler, and the term in a tiny run."""

import torch
import torch.nn.functional as F

from conftest import FAST, run_cli, draw_subject
from imprint.objectives.domainstudio import haar_high_frequency, pairwise_kl, relative_distances


def test_haar_high_frequency_is_lh_plus_hl_plus_hh():
    x = torch.tensor([[[[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, 0.0, 8.0]]]])  # (1, 1, 2, 4): two 2x2 blocks
    # each block [[a, b], [c, d]] -> (-a - b - c + 3d) / 2
    torch.testing.assert_close(haar_high_frequency(x), torch.tensor([[[[(-1 - 2 - 3 + 12) / 2, (0 + 0 + 0 + 24) / 2]]]]))
    flat = torch.ones(2, 3, 4, 4)  # no detail: no high frequency
    torch.testing.assert_close(haar_high_frequency(flat), torch.zeros(2, 3, 2, 2))


def test_relative_distances_and_kl_against_a_direct_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])

    def direct(x):
        rows = []
        for i in range(3):
            cos = [float(F.cosine_similarity(x[i], x[j], dim=0)) for j in range(3) if j != i]
            e = torch.exp(torch.tensor(cos))
            rows.append(e / e.sum())
        return torch.stack(rows)

    torch.testing.assert_close(relative_distances(a), direct(a))
    p, q = direct(a), direct(b)
    torch.testing.assert_close(pairwise_kl(a, b), (p * (p.log() - q.log())).mean())  # KL(p_src || p_ada), element mean


def test_predicted_x0_matches_the_scheduler(tiny_model):
    from diffusers import DDPMScheduler

    from imprint.families import load_family

    family = load_family(str(tiny_model))
    torch.manual_seed(0)
    noisy, prediction = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([10, 700])
    for kind in ("epsilon", "v_prediction"):
        family.prediction_type = kind
        # unclipped, as SD's own scheduler config (clip_sample false) steps it
        scheduler = DDPMScheduler.from_config(family.noise_scheduler.config, prediction_type=kind, clip_sample=False)
        expected = torch.stack([scheduler.step(prediction[i:i + 1], int(t[i]), noisy[i:i + 1]).pred_original_sample[0]
                                for i in range(2)])
        torch.testing.assert_close(family.predicted_x0(noisy, prediction, t), expected, rtol=1e-4, atol=1e-5)


def test_domainstudio_in_a_tiny_run(tiny_model, tmp_path, capsys):
    import json

    folder = tmp_path / "subject"
    folder.mkdir()
    for i in range(3):
        draw_subject(folder / f"{i}.png", i)
    base = ["train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST, "--steps", "2",
            "--checkpoint-every", "0", "--no-final-samples", "--domainstudio-weight", "1"]
    assert run_cli(*base, "--output", tmp_path / "r0") == 2
    assert "add --prior-preservation" in capsys.readouterr().err
    assert run_cli(*base, "--output", tmp_path / "r1", "--prior-preservation", "--batch-size", "2") == 2
    assert "--batch-size 3 or more" in capsys.readouterr().err
    assert run_cli(*base, "--output", tmp_path / "run", "--prior-preservation", "--batch-size", "3",
                   "--num-class-images", "3") == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(e["loss_domainstudio"] > 0 for e in log)
    assert all(abs(e["loss"] - (e["loss_denoise"] + e["loss_prior"] + e["loss_domainstudio"])) < 1e-4 for e in log)
