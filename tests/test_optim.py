"""--optimizer (adamw, adamw8bit, prodigy) and --log-with tensorboard: each optimizer trains a
tiny task on the core or fails with its one-line error, checkpoints and resumes after a kill
exactly, and TensorBoard holds log.jsonl's scalars, once per step, across a resume."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FAST, run_cli
from imprint.core import optim
from imprint.core.checkpoint import load_checkpoint, optimizer_from_flat, optimizer_to_flat
from imprint.core.loop import Task, fit
from imprint.core.precision import make_accelerator
from imprint.core.run_folder import RunFolder
from imprint.core.settings import TrainerSettings
from imprint.util.errors import ImprintError
from test_errors import assert_clean_error, train_args


class WideRegression(Task):
    """Y = X W on fixed rows, W of 64 x 64 = 4096 weights: bitsandbytes keeps the state of a
    tensor this size in 8 bits (smaller ones in 32). W starts at 0, as LoRA's B does, which
    Prodigy's state stores as a 0-dim tensor."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.zeros(64, 64))
        self.x = torch.randn(256, 64, generator=g)
        self.y = self.x @ (torch.randn(64, 64, generator=g) / 8)

    def parameters(self):
        return [self.w]

    def loss(self, step, micro):
        rows = slice(step * 16 % 256, step * 16 % 256 + 16)
        return ((self.x[rows] @ self.w - self.y[rows]) ** 2).mean(), {}

    def trainable_state(self):
        return {"w": self.w.detach().clone()}

    def load_trainable_state(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])


LR = {"adamw": 1e-2, "adamw8bit": 1e-2, "prodigy": 1.0}


def settings(optimizer, **changes):
    return TrainerSettings(**{**dict(steps=8, optimizer=optimizer, lr=LR[optimizer], weight_decay=0.0,
                                     max_grad_norm=1.0, checkpoint_every=3, keep_checkpoints=2), **changes})


def bitsandbytes_here() -> str | None:
    """None where adamw8bit runs on this machine's CPU, else its one-line error."""
    try:
        optim.check_optimizer("adamw8bit", "cpu")
    except ImprintError as e:
        return str(e)
    return None


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# --- each optimizer on the core ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["adamw", "prodigy", "adamw8bit"])
def test_each_optimizer_trains_or_says_why_not(name, tmp_path):
    if name == "adamw8bit" and bitsandbytes_here():
        with pytest.raises(ImprintError) as error:
            fit(WideRegression(), settings(name), RunFolder(tmp_path / "run"), make_accelerator("no"))
        message = str(error.value)
        # names the flag, and the fix: the other optimizer (so "--optimizer adamw" twice)
        assert "\n" not in message and "--optimizer adamw8bit" in message and message.count("--optimizer adamw") == 2
        return
    task = WideRegression()
    fit(task, settings(name, steps=20, checkpoint_every=0), RunFolder(tmp_path / "run"), make_accelerator("no"))
    log = logged(tmp_path / "run")
    assert [e["step"] for e in log] == list(range(1, 21)) and task.w.detach().abs().sum() > 0
    if name == "prodigy":
        # Prodigy starts from a tiny step size d0 = 1e-6 and grows its estimate from there
        assert log[0]["lr"] == 1.0 and log[-1]["prodigy_d"] > 1e-6
    else:
        assert "prodigy_d" not in log[0] and log[-1]["loss"] < 0.5 * log[0]["loss"]


def test_adamw_is_the_one_of_before():
    """The default is torch's AdamW with the same arguments as before the option existed; on the
    CPU neither fused nor foreach (tests/test_equivalence.py guards the whole run)."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = optim.make_optimizer(params, TrainerSettings(lr=1e-4))
    assert type(optimizer) is torch.optim.AdamW
    defaults = optimizer.defaults
    assert (defaults["lr"], defaults["betas"], defaults["eps"], defaults["weight_decay"]) == (1e-4, (0.9, 0.999),
                                                                                          1e-8, 1e-2)
    assert defaults["fused"] is None and defaults["foreach"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused AdamW is taken on CUDA only")
def test_adamw_is_fused_on_cuda():
    params = [torch.nn.Parameter(torch.zeros(3, device="cuda"))]
    assert optim.make_optimizer(params, TrainerSettings(lr=1e-4)).defaults["fused"] is True


def test_prodigy_settings_and_lr(caplog):
    from imprint.image.settings import build_config
    from test_config import REQUIRED, flags

    assert build_config(REQUIRED, flags("--optimizer", "prodigy")).trainer.lr == 1.0
    assert build_config(REQUIRED, flags("--optimizer", "prodigy", "--method", "full")).trainer.lr == 1.0
    assert build_config(REQUIRED, flags("--optimizer", "prodigy", "--lr", "0.5")).trainer.lr == 0.5
    assert build_config(REQUIRED, flags()).trainer.lr == 1e-4  # adamw: the method's

    params = [torch.nn.Parameter(torch.zeros(3))]
    with caplog.at_level("WARNING", logger="imprint"):
        optimizer = optim.make_optimizer(params, TrainerSettings(optimizer="prodigy", lr=1.0, weight_decay=0.01))
    assert not caplog.records
    group = optimizer.param_groups[0]
    assert type(optimizer).__name__ == "Prodigy" and group["betas"] == (0.9, 0.99)
    assert group["use_bias_correction"] and group["safeguard_warmup"] and group["d_coef"] == 1.0
    assert group["weight_decay"] == 0.01 and group["decouple"]
    with caplog.at_level("WARNING", logger="imprint"):
        optim.make_optimizer(params, TrainerSettings(optimizer="prodigy", lr=1e-4))
    assert "--optimizer prodigy with --lr 0.0001" in caplog.text and "leave --lr out" in caplog.text


# --- checkpoints: every optimizer's state, kept exactly ---------------------------------------------
def test_nested_and_shared_optimizer_state_round_trips(tmp_path):
    """bitsandbytes' layout, with or without bitsandbytes here: per parameter a nested dict of
    quantised buffers, one quantisation map shared by every parameter, an int step."""
    qmap = torch.linspace(-1, 1, 256)
    state = {"state": {i: {"step": 3, "__bnb_optimizer_quant_state__": {
        "state1": torch.arange(8, dtype=torch.uint8) + i, "qmap1": qmap, "absmax1": torch.tensor([0.5, 2.0])}}
        for i in range(2)},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "t_alpha": None, "d": 1.2345678901234567e-05,
                          "growth_rate": float("inf"), "params": [0, 1]}]}
    tensors, rest = optimizer_to_flat(state)
    save_file(tensors, str(tmp_path / "o.safetensors"))
    back = optimizer_from_flat(load_file(str(tmp_path / "o.safetensors")), json.loads(json.dumps(rest)))
    for i in range(2):
        key = "__bnb_optimizer_quant_state__"
        inner, saved = back["state"][i][key], state["state"][i][key]
        assert back["state"][i]["step"] == 3 and inner.keys() == saved.keys()
        assert all(torch.equal(inner[k], saved[k]) and inner[k].dtype == saved[k].dtype for k in saved)
    group = back["param_groups"][0]
    assert group["d"] == 1.2345678901234567e-05 and group["growth_rate"] == float("inf")
    with pytest.raises(ValueError, match="param_groups\\['lr'\\]"):
        optimizer_to_flat({"state": {}, "param_groups": [{"lr": torch.tensor(1e-3), "params": []}]})


def train_in_a_process(out: Path, name: str, kill: str | None = None, resume: bool = False):
    env = {k: v for k, v in os.environ.items() if k != "IMPRINT_TEST_KILL"}
    if kill:
        env["IMPRINT_TEST_KILL"] = kill
    args = [sys.executable, __file__, str(out), name] + (["--resume"] if resume else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["prodigy", "adamw8bit"])
def test_kill_and_resume_equals_unbroken(name, tmp_path):
    """SIGKILLed at step 5 (past checkpoint 3), resumed: the weights and the optimizer state of
    an unbroken run, bit for bit; TensorBoard shows each step once, with log.jsonl's values.

    The unbroken run is a fresh process too, as a user's is. Run inside the test process, after the
    suite's other tests, it once ended 1e-4 (relative) away from the resumed run (CI, 2026-12-07,
    Prodigy), while alone it matched bit for bit: the test process's state, not the resume, differed
    (a BLAS's path can depend on it; Prodigy's growing step amplifies the last digits)."""
    if name == "adamw8bit" and bitsandbytes_here():
        pytest.skip(bitsandbytes_here())
    unbroken = train_in_a_process(tmp_path / "unbroken", name)
    assert unbroken.returncode == 0, unbroken.stderr

    run = tmp_path / "killed"
    killed = train_in_a_process(run, name, kill="step:5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [e["step"] for e in logged(run)] == [1, 2, 3, 4, 5]
    resumed = train_in_a_process(run, name, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert torch.equal(load_file(str(run / "final.safetensors"))["w"], load_file(str(tmp_path / "unbroken" / "final.safetensors"))["w"])

    # the state of the last checkpoint each run wrote (6) and the logs: the same
    _, _, a = load_checkpoint(tmp_path / "unbroken" / "checkpoints" / "checkpoint-6")
    _, _, b = load_checkpoint(run / "checkpoints" / "checkpoint-6")
    (tensors_a, rest_a), (tensors_b, rest_b) = optimizer_to_flat(a), optimizer_to_flat(b)
    assert rest_a == rest_b and tensors_a.keys() == tensors_b.keys()
    assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    expected = [{k: v for k, v in e.items() if k != "time"} for e in logged(tmp_path / "unbroken")]
    assert [{k: v for k, v in e.items() if k != "time"} for e in logged(run)] == expected
    if name == "prodigy":
        # the floats Prodigy keeps in param_groups, which its next steps depend on, moved and came back
        group = a["param_groups"][0]
        assert group["d_numerator"] > 0 and 0 < group["d_hat"] < group["d"] and group["k"] == 6

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "lr"} <= set(scalars) and ("prodigy_d" in scalars) == (name == "prodigy")
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == list(range(1, 9))  # steps 4, 5 of the killed run purged
    assert [e.value for e in loss] == pytest.approx([e["loss"] for e in expected], rel=1e-6)


# --- through the CLI ---------------------------------------------------------------------------------
@pytest.fixture
def no_model_loaded(monkeypatch):
    import imprint.image.train as image_train

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(image_train, "SubjectTask", refuse)


@pytest.fixture
def fresh_bitsandbytes_check():
    optim._bitsandbytes.cache_clear()
    yield
    optim._bitsandbytes.cache_clear()


def test_adamw8bit_without_bitsandbytes(tiny_model, subject_dir, tmp_path, capsys, monkeypatch,
                                        no_model_loaded, fresh_bitsandbytes_check):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    rc = run_cli(*train_args(tiny_model, subject_dir, tmp_path / "out", "--optimizer", "adamw8bit"))
    assert_clean_error(capsys, rc, "--optimizer adamw8bit", "not installed", "pip install bitsandbytes",
                       "CUDA GPU", "--optimizer adamw")
    assert not (tmp_path / "out").exists()


def test_adamw8bit_that_cannot_run_here(tiny_model, subject_dir, tmp_path, capsys, monkeypatch,
                                        no_model_loaded, fresh_bitsandbytes_check):
    """bitsandbytes installed, but without kernels for this device (a CPU, with most releases):
    it imports, then fails at the first step; the error comes before the model loads instead."""
    import types

    class AdamW8bit(torch.optim.Optimizer):
        def __init__(self, params, **kwargs):
            super().__init__(params, {})

        def step(self, closure=None):
            raise RuntimeError("CUDA is required for 8-bit optimizers\nmore lines")

    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=AdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    rc = run_cli(*train_args(tiny_model, subject_dir, tmp_path / "out", "--optimizer", "adamw8bit"))
    line = assert_clean_error(capsys, rc, "--optimizer adamw8bit", "does not run on this machine's cpu",
                              "CUDA is required", "needs a CUDA GPU", "--optimizer adamw here")
    assert "more lines" not in line


def test_adamw8bit_on_this_machine_through_the_cli(tiny_model, subject_dir, tmp_path, capsys):
    """The real bitsandbytes here (if any): a step of LoRA, or the one-line error and exit 2."""
    rc = run_cli(*train_args(tiny_model, subject_dir, tmp_path / "out", "--optimizer", "adamw8bit",
                             "--steps", "1", "--checkpoint-every", "0", "--no-final-samples"))
    why_not = bitsandbytes_here()
    if why_not:
        assert_clean_error(capsys, rc, "--optimizer adamw8bit", "--optimizer adamw")
    else:
        assert rc == 0 and json.loads((tmp_path / "out" / "config.json").read_text())["optimizer"] == "adamw8bit"


def test_log_with_tensorboard_without_tensorboard(tiny_model, subject_dir, tmp_path, capsys, monkeypatch,
                                                  no_model_loaded):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    rc = run_cli(*train_args(tiny_model, subject_dir, tmp_path / "out", "--log-with", "tensorboard"))
    assert_clean_error(capsys, rc, "--log-with tensorboard", "pip install tensorboard")


def test_prodigy_and_tensorboard_through_the_cli(tiny_model, subject_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy",
                   "--optimizer", "prodigy", "--log-with", "tensorboard", "--steps", "3", "--checkpoint-every", "2",
                   "--no-final-samples", "--output", run, *FAST) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer"] == "prodigy" and config["lr"] == 1.0 and config["log_with"] == "tensorboard"
    log = logged(run)
    assert [e["lr"] for e in log] == [1.0] * 3 and all(e["prodigy_d"] > 0 for e in log)
    _, _, state = load_checkpoint(run / "checkpoints" / "checkpoint-2")
    assert state["param_groups"][0]["k"] == 2 and state["param_groups"][0]["safeguard_warmup"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [
        (e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in log]


def test_help_shows_the_new_flags_with_defaults(capsys):
    with pytest.raises(SystemExit):
        run_cli("train", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--optimizer OPTIMIZER" in text and "(adamw | adamw8bit | prodigy) [default: adamw]" in text
    assert "--log-with LOG_WITH" in text and "(none | tensorboard) [default: none]" in text
    assert "1.0 with --optimizer prodigy" in text


# --- the process of the kill test -------------------------------------------------------------------
if __name__ == "__main__":
    out, name = Path(sys.argv[1]), sys.argv[2]
    task = WideRegression()
    fit(task, settings(name, log_with="tensorboard"), RunFolder(out), make_accelerator("no"),
        resume="latest" if "--resume" in sys.argv else None)
    save_file(task.trainable_state(), str(out / "final.safetensors"))
