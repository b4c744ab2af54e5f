"""`imprint diagnose` (issue 18): intruder dimensions on matrices with planted intruders, TuCo's
decomposition (0 on the base itself), contrastive generation's sampling rule, conjugate prompting's
transforms, and the command on a tiny language-model run and a tiny image run."""

from __future__ import annotations

import json
import math
import shutil
import types

import pytest
import torch

from conftest import run_cli


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)))[0]


# --- intruder dimensions ------------------------------------------------------------------------

def test_max_similarities_are_the_largest_absolute_cosines_to_the_base_vectors():
    from imprint.diagnose.intruders import max_similarities

    g = torch.Generator().manual_seed(0)
    base, tuned = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
    got = max_similarities(base, tuned, k=4)
    u0 = torch.linalg.svd(base, full_matrices=False).U
    u = torch.linalg.svd(tuned, full_matrices=False).U
    for j in range(4):
        expected = max(abs(float(torch.dot(u[:, j], u0[:, i]) / (u[:, j].norm() * u0[:, i].norm()))) for i in range(8))
        assert float(got[j]) == pytest.approx(expected, abs=1e-5)


def test_planted_intruders_are_counted_and_a_rescaled_matrix_has_none():
    from imprint.diagnose.intruders import intruder_counts, model_intruders

    u0, v0 = orthonormal(64, 48, 1), orthonormal(48, 48, 2)
    base = u0 @ torch.diag(torch.linspace(5, 0.1, 48)) @ v0.T
    planted = orthonormal(64, 3, 3)  # random directions: no base singular vector is near any of them
    tuned = base + planted @ torch.diag(torch.tensor([60.0, 50.0, 40.0])) @ orthonormal(48, 3, 4).T
    counts = intruder_counts(base, tuned, k=10, epsilons=(0.5, 0.9))
    assert counts[0] == 3  # the planted three; the next seven are the base's own top vectors
    assert counts[1] >= 3
    assert intruder_counts(base, 2 * base, k=10, epsilons=(0.5,)) == [0]  # the same singular vectors
    assert intruder_counts(base, base.clone(), k=10, epsilons=(0.5,)) == [0]
    summary = model_intruders({"a": base, "b": base, "c": torch.ones(3)}, {"a": tuned, "b": base, "c": torch.ones(3)},
                              epsilons=(0.5,))
    assert summary["total"] == [3] and summary["matrices_changed"] == 1 and summary["matrices_compared"] == 2


def test_a_wrapped_layers_weight_is_its_effective_map():
    """A PEFT LoRA layer (not merged) is read as W + (alpha / r) B A, named as the plain layer."""
    from peft import LoraConfig, get_peft_model

    from imprint.diagnose.run import linear_maps

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    model = get_peft_model(torch.nn.Sequential(*[m for m in plain]), LoraConfig(r=2, lora_alpha=6, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    maps = linear_maps(model.base_model.model)
    assert set(maps) == {"0", "2"}
    expected = layer.base_layer.weight + 3.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(maps["0"], expected.detach())
    torch.testing.assert_close(maps["2"], model.base_model.model[2].weight.detach())


# --- TuCo ------------------------------------------------------------------------------------------------

def load(folder):
    from imprint.families.causal_lm import CausalLM

    return CausalLM.load(str(folder))


def test_tuco_is_zero_on_the_base_itself_and_its_decomposition_is_exact(tiny_llama):
    from imprint.diagnose.tuco import prompt_texts, tuning_contribution

    base, same = load(tiny_llama), load(tiny_llama)
    text = prompt_texts(base.tokenizer, ["Reverse: red cat"])[0]
    result = tuning_contribution(base, same, text)
    assert result["tuco"] == 0 and result["ftc_l1"] == 0
    tuned = load(tiny_llama)
    with torch.no_grad():
        block = tuned.blocks()[2]
        block.mlp.down_proj.weight.add_(0.5 * torch.randn(block.mlp.down_proj.weight.shape,
                                                         generator=torch.Generator().manual_seed(0)))
    result = tuning_contribution(base, tuned, text)
    assert 0 < result["tuco"] < 1
    assert result["decomposition_error"] < 1e-4  # x_L = x_0 + sum PTC + sum FTC
    # the formula: |sum FTC|_1 / (|sum PTC|_1 + |sum FTC|_1)
    assert result["tuco"] == pytest.approx(result["ftc_l1"] / (result["ptc_l1"] + result["ftc_l1"]))


# --- contrastive generation -------------------------------------------------------------------------------

def test_contrastive_scores_are_the_log_ratio_over_the_plausible_tokens():
    from imprint.diagnose.contrastive import contrastive_scores

    ft = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.04, 0.01]))
    pt = torch.log(torch.tensor([0.6, 0.1, 0.2, 0.05, 0.05]))
    scores = contrastive_scores(ft, pt, alpha=0.1, gamma=1.0)
    # plausible: p_FT >= 0.1 * 0.5, so the first three
    assert torch.isinf(scores[3:]).all()
    torch.testing.assert_close(scores[:3], ft[:3] - pt[:3])
    torch.testing.assert_close(contrastive_scores(ft, pt, 0.1, 0.5)[:3], ft[:3] - 0.5 * pt[:3])


class FixedModel(torch.nn.Module):
    """A 'model' whose next-token distribution is always the same."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.log(torch.tensor(probs))

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        return types.SimpleNamespace(logits=self.logits.expand(1, input_ids.shape[1], -1), past_key_values=None)


def test_contrastive_sampling_draws_from_the_softmax_of_the_scores():
    from imprint.diagnose.contrastive import contrastive_sample

    ft, pt = [0.5, 0.3, 0.15, 0.04, 0.01], [0.6, 0.1, 0.2, 0.05, 0.05]
    ids, _ = contrastive_sample(FixedModel(ft), FixedModel(pt), torch.tensor([[0]]), 20_000, set(),
                                torch.Generator().manual_seed(0))
    ratios = torch.tensor(ft[:3]) / torch.tensor(pt[:3])
    expected = ratios / ratios.sum()  # softmax(log p_FT - log p_PT) over the plausible set
    counts = torch.bincount(torch.tensor(ids), minlength=5).float() / len(ids)
    torch.testing.assert_close(counts[:3], expected, atol=0.01, rtol=0)
    assert counts[3:].sum() == 0


def test_iterative_contrastive_generation_updates_a_copy_of_the_pretrained_model(tiny_llama):
    from imprint.diagnose.contrastive import contrastive_generation

    ft, pt = load(tiny_llama), load(tiny_llama)
    with torch.no_grad():
        ft.model.model.norm.weight.mul_(3.0)  # sharper: the two models differ
    before = {k: v.clone() for k, v in pt.model.state_dict().items()}
    texts = contrastive_generation(ft, pt, samples=2, length=6, iterative=True, lr=1e-2, seed=0)
    assert len(texts) == 2 and all(1 <= t["tokens"] <= 6 for t in texts)
    assert all(torch.equal(before[k], v) for k, v in pt.model.state_dict().items())  # the caller's model untouched


# --- conjugate prompting ---------------------------------------------------------------------------------------

def test_leet_is_undone_in_words_and_numbers_stay_numbers():
    from imprint.diagnose.conjugate import leet, unleet

    assert leet("The capital is Paris") == "7h3 c4p174l 15 P4r15"
    assert unleet("7h3 c4p174l 15 P4r15, 42 p30pl3") == "the capital 15 Paris, 42 people"


# --- the command -------------------------------------------------------------------------------------------------

def test_diagnose_an_lm_run_writes_every_diagnostic_into_its_report(tiny_llama, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}", "completion": f"{w} {w}"}) + "\n"
                            for w in ["red", "blue", "cat", "dog", "sun", "moon"]))
    run = tmp_path / "run"
    assert run_cli("lm", "train", "--model", tiny_llama, "--data", data, "--output", run, "--steps", "3",
                   "--batch-size", "2", "--lr", "1e-2", "--validation-share", "0.34", "--max-new-tokens", "4") == 0
    assert run_cli("diagnose", run, "--samples", "2", "--length", "4", "--prompts", "2", "--max-new-tokens", "4") == 0
    d = json.loads((run / "diagnostics.json").read_text())
    assert set(d) == {"intruders", "tuco", "contrastive", "conjugate"}
    assert d["intruders"]["matrices_changed"] == d["intruders"]["matrices_compared"] > 0  # LoRA on all linears
    assert set(d["tuco"]) == {"task", "control"} and all(0 < v["mean"] < 1 for v in d["tuco"].values())
    assert d["conjugate"]["prompts"] > 0 and len(d["contrastive"]["texts"]) == 2
    assert "Diagnostics" in (run / "report.html").read_text()
    assert run_cli("diagnose", run, "--what", "class_images") != 0  # an image diagnostic of a language run


def test_diagnose_an_image_run_puts_the_class_images_side_by_side(lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    assert run_cli("diagnose", run, "--images", "1", "--seed", "3") == 0
    d = json.loads((run / "diagnostics.json").read_text())
    assert d["intruders"]["matrices_changed"] > 0 and len(d["intruders"]["total"]) == 9
    assert all((run / p).is_file() for p in d["class_images"]["images"].values())
    assert "toy" in d["class_images"]["prompt"]
    assert math.isfinite(sum(d["intruders"]["total"]))
