import pytest

from imprint.cli import build_parser
from imprint.config import FIELDS, build_config, load_toml
from imprint.errors import ImprintError

REQUIRED = {"model": "m", "images": "i", "class_name": "dog", "output": "o"}


def flags(*argv):
    args = build_parser().parse_args(["train", *argv])
    return {k: getattr(args, k) for k in FIELDS}


def test_toml_keys_and_flags_win(tmp_path):
    (tmp_path / "run.toml").write_text(
        'model = "m"\nimages = "i"\nclass-name = "dog"\noutput = "o"\nsteps = 100\nrank = 8\n'
        'prior_preservation = true\nsample_prompt = ["a {token} {class_name}"]\n')
    cfg = build_config(load_toml(str(tmp_path / "run.toml")), flags("--steps", "7"))
    assert cfg.steps == 7 and cfg.rank == 8 and cfg.prior_preservation
    assert cfg.sample_prompt == ["a {token} {class_name}"]
    cfg = build_config(load_toml(str(tmp_path / "run.toml")), flags("--no-prior-preservation"))
    assert cfg.prior_preservation is False


@pytest.mark.parametrize("method,lr", [("lora", 1e-4), ("full", 5e-6), ("textual_inversion", 5e-4)])
def test_method_default_lr(method, lr):
    assert build_config(REQUIRED, flags("--method", method)).lr == lr
    assert build_config(REQUIRED, flags("--method", method, "--lr", "0.3")).lr == 0.3


def test_instance_prompt_filled():
    cfg = build_config(REQUIRED, flags("--token", "zwx"))
    assert cfg.fill(cfg.instance_prompt) == "a photo of zwx dog"


@pytest.mark.parametrize("argv,needle", [
    (["--rank", "0"], "--rank"),
    (["--resolution", "33"], "multiple of 8"),
    (["--mixed-precision", "fp8"], "--mixed-precision"),
    (["--lora-targets", "conv"], "--lora-targets"),
    (["--instance-prompt", "a {subject}"], "--instance-prompt"),
])
def test_invalid_values(argv, needle):
    with pytest.raises(ImprintError, match=needle):
        build_config(REQUIRED, flags(*argv))


def test_required_keys():
    with pytest.raises(ImprintError, match="--class-name is required"):
        build_config({k: v for k, v in REQUIRED.items() if k != "class_name"}, flags())


def test_toml_type_error(tmp_path):
    (tmp_path / "run.toml").write_text('steps = "many"\n')
    with pytest.raises(ImprintError, match="--steps"):
        build_config({**REQUIRED, **load_toml(str(tmp_path / "run.toml"))}, flags())
