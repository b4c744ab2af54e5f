"""The architecture's promises: a core that knows no modality, an objective made of loss terms,
families behind an interface (a second, fake one trains and generates), imports that run downward."""

import ast
import json
import shutil

import pytest
import torch

from conftest import FAST, REPO, run_cli
from imprint.core.ema import EMA
from imprint.core.loop import Task, fit
from imprint.core.precision import make_accelerator
from imprint.core.run_folder import RunFolder
from imprint.core.settings import TrainerSettings
from imprint.objectives import TERMS, Batch, LossTerm, Objective, register_term
from imprint.objectives.base import CLASS, INSTANCE
from imprint.objectives.denoise import Denoise
from imprint.objectives.prior import PriorPreservation, PriorSettings
from imprint.objectives.snr import MinSNR, SNRSettings, min_snr_weight


# --- the core, on a task that is no image ------------------------------------------------------
class Regression(Task):
    """y = w x on fixed rows: a task of no modality. Call m of step s takes `rows` rows from
    (s * calls + m) * rows on, so 2 calls of 1 row and 1 call of 2 rows see the same data."""

    def __init__(self, calls: int = 1, rows: int = 1):
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.x, self.y = torch.randn(64, 3), torch.randn(64)
        self.calls, self.rows = calls, rows

    def parameters(self):
        return [self.w]

    def loss(self, step, micro):
        start = (step * self.calls + micro) * self.rows
        x, y = self.x[start:start + self.rows], self.y[start:start + self.rows]
        return ((x @ self.w - y) ** 2).mean(), {}

    def trainable_state(self):
        return {"w": self.w.detach().clone()}

    def load_trainable_state(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])


def settings(**changes):
    return TrainerSettings(**{**dict(steps=5, lr=0.1, weight_decay=0.0, max_grad_norm=0, checkpoint_every=0), **changes})


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    accumulated, large = Regression(calls=2, rows=1), Regression(calls=1, rows=2)
    fit(accumulated, settings(gradient_accumulation_steps=2), RunFolder(tmp_path / "a"), make_accelerator("no"))
    fit(large, settings(), RunFolder(tmp_path / "b"), make_accelerator("no"))
    torch.testing.assert_close(accumulated.w.detach(), large.w.detach())
    assert (accumulated.w.detach() != 0).all()
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_ema_follows_its_formula_and_resumes_exactly(tmp_path):
    live = {"w": torch.zeros(2)}
    ema = EMA(live, decay=0.9)
    expected = torch.zeros(2)
    for step, value in enumerate([1.0, 2.0, 3.0]):
        live["w"].fill_(value)
        ema.update(step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
    torch.testing.assert_close(ema.average["w"], expected)

    unbroken = Regression()
    unbroken_ema = fit(unbroken, settings(steps=6, ema_decay=0.5, checkpoint_every=3), RunFolder(tmp_path / "u"),
                       make_accelerator("no"))
    # a run killed at step 5 holds checkpoint 3 (the same as the unbroken run's) and 5 log lines
    shutil.copytree(tmp_path / "u" / "checkpoints", tmp_path / "k" / "checkpoints")
    lines = (tmp_path / "u" / "log.jsonl").read_text().splitlines()
    (tmp_path / "k" / "log.jsonl").write_text("\n".join(lines[:5]) + "\n")
    resumed = Regression()
    resumed_ema = fit(resumed, settings(steps=6, ema_decay=0.5, checkpoint_every=3), RunFolder(tmp_path / "k"),
                      make_accelerator("no"), resume="latest")
    torch.testing.assert_close(resumed.w.detach(), unbroken.w.detach())
    torch.testing.assert_close(resumed_ema.average["0"], unbroken_ema.average["0"])
    assert not torch.equal(resumed_ema.average["0"], resumed.w.detach())
    steps = [json.loads(line)["step"] for line in (tmp_path / "k" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 4, 5 of the killed run cut, then logged once


def test_callbacks_sample_with_the_ema_and_leave_training_untouched(tmp_path):
    from imprint.core.loop import Callback

    class Sampler(Callback):
        seen = []

        def on_step_end(self, step):
            with self.ema.applied():
                self.seen.append((task.w.detach().clone(), self.ema.average["0"].clone()))

    plain = Regression()
    fit(plain, settings(steps=4, ema_decay=0.5), RunFolder(tmp_path / "p"), make_accelerator("no"))
    task = Regression()
    fit(task, settings(steps=4, ema_decay=0.5), RunFolder(tmp_path / "s"), make_accelerator("no"),
        callbacks=[Sampler()])
    assert len(Sampler.seen) == 4
    for in_model, average in Sampler.seen:
        torch.testing.assert_close(in_model, average)  # what a sample sees is the average
    torch.testing.assert_close(task.w.detach(), plain.w.detach(), rtol=0, atol=0)  # and training goes on as without


# --- the objective --------------------------------------------------------------------------------
class StubFamily:
    prediction_type = "epsilon"

    def snr(self, timesteps):
        return timesteps.float() / 10


def fixed_batch():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(4, 2, 3, 3, generator=g)
    timesteps = torch.tensor([1, 20, 50, 80])
    return Batch(latents=target, noise=target, timesteps=timesteps, noisy=target, target=target,
                 conditioning={}, roles=[INSTANCE, INSTANCE, CLASS, CLASS]), torch.randn(4, 2, 3, 3, generator=g)


def test_objective_terms_against_a_direct_computation():
    batch, prediction = fixed_batch()
    objective = Objective([Denoise(), PriorPreservation(PriorSettings(0.7)), MinSNR(SNRSettings(snr_gamma=5.0))])
    loss, parts = objective(batch, StubFamily(), prediction)
    snr = batch.timesteps.float() / 10
    weight = torch.clamp(snr, max=5.0) / snr  # Hang et al. 2023, epsilon target
    row = ((prediction - batch.target) ** 2).mean(dim=(1, 2, 3)) * weight
    expected = row[:2].mean() + 0.7 * row[2:].mean()
    torch.testing.assert_close(loss, expected)
    assert parts["loss_denoise"] == pytest.approx(float(row[:2].mean()))
    assert parts["loss_prior"] == pytest.approx(float(0.7 * row[2:].mean()))
    # off (gamma 0): the plain mean squared error
    plain, _ = Objective([Denoise(), MinSNR(SNRSettings(snr_gamma=0.0))])(batch, StubFamily(), prediction)
    torch.testing.assert_close(plain, ((prediction - batch.target) ** 2).mean(dim=(1, 2, 3))[:2].mean())


def test_min_snr_weights_of_the_paper():
    snr = torch.tensor([0.0, 0.5, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "v_prediction"), torch.tensor([0.0, 0.5 / 1.5, 5 / 6, 5 / 51]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 1.0, 0.1]))


@pytest.fixture
def extra_term():
    """A loss term added the way a paper's term will be: one class, registered; the loop untouched."""

    @register_term
    class HalfAnchor(LossTerm):
        name = "half_anchor"
        calls = 0

        def loss(self, ctx):
            HalfAnchor.calls += 1
            assert ctx.batch.conditioning and ctx.prediction.shape == ctx.batch.target.shape
            gap = ctx.prediction.float() - ctx.reference_prediction.float()  # the frozen model's
            return 0.5 * gap.pow(2).mean()

    yield HalfAnchor
    del TERMS["half_anchor"]


def test_a_new_term_is_one_class_and_no_loop_edit(extra_term, tiny_model, subject_dir, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy", "--lr", "1e-2",
                   "--steps", "3", "--checkpoint-every", "0", "--no-final-samples", "--output", run, *FAST) == 0
    assert extra_term.calls == 3
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all("loss_half_anchor" in entry for entry in log)
    assert log[0]["loss_half_anchor"] == 0  # LoRA starts at the base model (B = 0)
    assert log[-1]["loss_half_anchor"] > 0
    for entry in log:
        assert entry["loss"] == pytest.approx(entry["loss_denoise"] + entry["loss_half_anchor"], rel=1e-5)


def test_reference_prediction_is_the_base_model(tiny_model):
    from peft import LoraConfig

    from imprint.families import load_family

    family = load_family(str(tiny_model))
    base = load_family(str(tiny_model))
    family.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"], init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, p in family.unet.named_parameters():
            if "lora_B" in name:
                p.normal_()
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 4, 4, 4, generator=g)
    t = torch.tensor([300])
    cond = family.encode_prompts(family.tokenize(["a toy"]))
    with torch.no_grad():
        adapted = family.predict(noisy, t, cond)
        reference = family.reference_prediction(noisy, t, cond)
        truth = base.predict(noisy, t, cond)
        again = family.predict(noisy, t, cond)
    torch.testing.assert_close(reference, truth)
    assert (adapted - truth).abs().max() > 1e-3
    torch.testing.assert_close(again, adapted)  # adapters are back on afterwards


# --- families ---------------------------------------------------------------------------------------
@pytest.fixture
def fake_family(monkeypatch):
    """A second family: another pipeline class name and its own conditioning keys. It reuses SD's
    parts (a fake needs weights), but nothing outside it may assume the names it changed."""
    from imprint.families import FAMILIES, StableDiffusionFamily

    class FakeFamily(StableDiffusionFamily):
        name = "fake"
        pipeline_class_names = ("FakeDiffusionPipeline",)
        predictions = 0

        def encode_prompts(self, tokens):
            return {"fake_text": super().encode_prompts(tokens)["prompt_embeds"], "fake_guidance": torch.ones(len(tokens))}

        def predict(self, noisy, timesteps, conditioning):
            FakeFamily.predictions += 1
            assert set(conditioning) == {"fake_text", "fake_guidance"}
            return self.unet(noisy, timesteps, conditioning["fake_text"], return_dict=False)[0]

    monkeypatch.setitem(FAMILIES, "fake", FakeFamily)
    return FakeFamily


def test_a_second_family_trains_and_generates(fake_family, tiny_model, subject_dir, tmp_path):
    from imprint.families import family_class

    model = tmp_path / "fake-model"
    shutil.copytree(tiny_model, model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "_class_name": "FakeDiffusionPipeline"}))
    assert family_class(str(model)) is fake_family and family_class(str(tiny_model)).name == "sd"
    run = tmp_path / "run"
    assert run_cli("train", "--model", model, "--images", subject_dir, "--class-name", "toy", "--lr", "1e-2",
                   "--prior-preservation", "--num-class-images", "2", "--steps", "2", "--checkpoint-every", "1",
                   "--output", run, *FAST) == 0
    assert fake_family.predictions == 2
    assert json.loads((run / "metadata.json").read_text())["family"] == "fake"
    assert run_cli("generate", "--run", run, "a sks toy", "--num-images", "1", "--inference-steps", "2",
                   "--output", tmp_path / "gen") == 0
    assert (tmp_path / "gen" / "grid.png").is_file()


def test_an_unknown_pipeline_class_is_a_clear_error(tiny_model, tmp_path, subject_dir, capsys):
    model = tmp_path / "kandinsky"
    shutil.copytree(tiny_model, model)
    (model / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    rc = run_cli("train", "--model", model, "--images", subject_dir, "--class-name", "toy", "--steps", "1",
                 "--output", tmp_path / "run", *FAST)
    err = capsys.readouterr().err
    assert rc == 2 and "KandinskyV22Pipeline" in err and "StableDiffusionPipeline" in err and "Traceback" not in err


# --- methods' generic PEFT files -------------------------------------------------------------------
def test_peft_adapters_of_any_type_round_trip(tiny_model, tmp_path):
    from peft import LoHaConfig

    from imprint.families import load_family
    from imprint.methods.peft_io import load_adapters, save_adapters

    family = load_family(str(tiny_model))
    family.unet.add_adapter(LoHaConfig(r=2, alpha=4, target_modules=["to_q", "to_k"], init_weights=False))
    g = torch.Generator().manual_seed(1)
    noisy, t = torch.randn(1, 4, 4, 4, generator=g), torch.tensor([500])
    cond = family.encode_prompts(family.tokenize(["a toy"]))
    with torch.no_grad():
        trained = family.predict(noisy, t, cond)
    assert save_adapters({"unet": family.unet}, tmp_path / "adapters") == ["unet"]
    assert (tmp_path / "adapters" / "unet" / "adapter_config.json").is_file()
    fresh = load_family(str(tiny_model))
    with torch.no_grad():
        base = fresh.predict(noisy, t, cond)
    load_adapters({"unet": fresh.unet}, tmp_path / "adapters")
    with torch.no_grad():
        loaded = fresh.predict(noisy, t, cond)
    assert (trained - base).abs().max() > 1e-4
    torch.testing.assert_close(loaded, trained)


# --- the layout -------------------------------------------------------------------------------------
# each room and the rooms it may import (imports run downward: cli -> tasks -> parts -> util)
ALLOWED = {
    "util": set(),
    "config": {"util"},
    "lm": {"util", "config", "core", "families", "methods", "evaluate"},
    "core": {"util"},
    "objectives": {"util"},
    "families": {"util"},
    "methods": {"util"},
    "evaluate": {"util"},
    "export": {"util", "core", "families", "methods"},  # a merged export applies the method's own loader
    "image": {"util", "config", "core", "objectives", "families", "methods", "evaluate"},
    "toyworld": {"util", "core", "objectives", "families", "evaluate", "image", "tiny"},
    "tiny": {"util"},
}


def test_imports_run_downward():
    root = REPO / "src" / "imprint"
    wrong = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        room = parts[0]
        if room not in ALLOWED:
            continue  # cli, demo: the top
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                if name == "imprint":
                    continue  # the package's version string: imprint/__init__.py imports nothing
                elif name.startswith("imprint."):
                    target = name.split(".")[1]
                else:
                    continue
                if target != room and target not in ALLOWED[room]:
                    wrong.append(f"{path.relative_to(root)} imports {name}")
    assert not wrong, wrong
