import dataclasses

import pytest

from imprint.cli import build_parser, describe_methods
from imprint.config import all_fields, load_toml
from imprint.image.settings import build_config, groups
from imprint.methods import METHODS
from imprint.util.errors import ImprintError

REQUIRED = {"model": "m", "images": "i", "class_name": "dog", "output": "o"}


def flags(*argv):
    args = build_parser().parse_args(["train", *argv])
    return {k: getattr(args, k) for k in all_fields(groups())}


def toml(tmp_path, text):
    (tmp_path / "run.toml").write_text(text)
    return load_toml(str(tmp_path / "run.toml"), groups())


def test_toml_keys_and_flags_win(tmp_path):
    values = toml(tmp_path, 'model = "m"\nimages = "i"\nclass-name = "dog"\noutput = "o"\nsteps = 100\nrank = 8\n'
                  'prior_preservation = true\nsample_prompt = ["a {token} {class_name}"]\n')
    cfg = build_config(values, flags("--steps", "7"))
    assert cfg.trainer.steps == 7 and cfg.method.rank == 8 and cfg.prior.prior_preservation
    assert cfg.samples.sample_prompt == ["a {token} {class_name}"]
    cfg = build_config(values, flags("--no-prior-preservation"))
    assert cfg.prior.prior_preservation is False


def test_toml_tables_by_section(tmp_path):
    values = toml(tmp_path, 'model = "m"\noutput = "o"\n[data]\nimages = "i"\nclass_name = "dog"\n'
                  '[prior]\nprior_preservation = true\nprior_loss_weight = 0.5\n[lora]\nrank = 16\n'
                  '[trainer]\nema_decay = 0.99\n[objective]\nsnr_gamma = 5.0\n')
    cfg = build_config(values, flags())
    assert cfg.prior.prior_preservation and cfg.terms["prior"].prior_loss_weight == 0.5
    assert cfg.method.rank == 16 and cfg.method.alpha == 16.0  # alpha resolved: one meaning everywhere
    assert cfg.trainer.ema_decay == 0.99 and cfg.terms["snr"].snr_gamma == 5.0
    with pytest.raises(ImprintError, match=r"\[lora\] has no key 'steps'"):
        toml(tmp_path, "[lora]\nsteps = 3\n")
    with pytest.raises(ImprintError, match=r"unknown table \[vera\]"):
        toml(tmp_path, "[vera]\nrank = 3\n")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_default_lr(method):
    assert build_config(REQUIRED, flags("--method", method)).trainer.lr == METHODS[method].default_lr
    assert build_config(REQUIRED, flags("--method", method, "--lr", "0.3")).trainer.lr == 0.3


def test_a_method_receives_only_its_settings():
    cfg = build_config(REQUIRED, flags("--method", "textual_inversion", "--num-vectors", "3"))
    assert [f.name for f in dataclasses.fields(cfg.method)] == ["num_vectors"] and cfg.method.num_vectors == 3
    with pytest.raises(ImprintError, match="--rank: a setting of [a-z /]*lora[a-z /]*, not of --method full"):
        build_config(REQUIRED, flags("--method", "full", "--rank", "8"))
    assert "rank" not in build_config(REQUIRED, flags("--method", "full")).to_dict()


def test_instance_prompt_filled():
    cfg = build_config(REQUIRED, flags("--token", "zwx"))
    assert cfg.fill(cfg.data.instance_prompt) == "a photo of zwx dog"


@pytest.mark.parametrize("argv,needle", [
    (["--rank", "0"], "--rank"),
    (["--resolution", "33"], "multiple of 8"),
    (["--mixed-precision", "fp8"], "--mixed-precision"),
    (["--lora-targets", "conv"], "--lora-targets"),
    (["--instance-prompt", "a {subject}"], "--instance-prompt"),
    (["--sample-prompt", "a {who}"], "--sample-prompt"),
    (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps"),
    (["--ema-decay", "1.5"], "--ema-decay"),
    (["--snr-weighting", "max"], "--snr-weighting"),
])
def test_invalid_values(argv, needle):
    with pytest.raises(ImprintError, match=needle):
        build_config(REQUIRED, flags(*argv))


def test_required_keys():
    with pytest.raises(ImprintError, match="--class-name is required"):
        build_config({k: v for k, v in REQUIRED.items() if k != "class_name"}, flags())


def test_toml_type_error(tmp_path):
    with pytest.raises(ImprintError, match="--steps"):
        build_config({**REQUIRED, **toml(tmp_path, 'steps = "many"\n')}, flags())


def test_flag_names_are_unique_and_every_flag_has_help_and_default():
    seen = {}
    for group in groups():
        for name, f in group.fields().items():
            # one name, one concept: a field in two sections must be the same declaration
            if name in seen:
                assert seen[name].metadata["help"] == f.metadata["help"], name
            seen[name] = f
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    shown = [a for a in train._actions if a.option_strings and a.dest not in ("help", "config")]
    assert len(shown) == len(seen)
    for action in shown:
        assert action.help and "[default: " in action.help, action.option_strings
    assert "[default: None]" not in train.format_help() and "(default: None)" not in train.format_help()
    # grouped by theme
    titles = [g.title for g in train._action_groups]
    assert {"prior preservation", "optimizer, precision, checkpoints"} <= set(titles)
    # shared flags under lora
    assert any(t.startswith("method lora (its flags also set ") and "dora" in t for t in titles)


def test_methods_command_lists_every_method_and_setting():
    text = describe_methods()
    for name, cls in METHODS.items():
        assert f"{name}: " in text and f"default lr {cls.default_lr:g}" in text
        for f in dataclasses.fields(cls.Settings):
            assert "--" + f.name.replace("_", "-") in text
    with pytest.raises(ImprintError, match="--name vera"):
        describe_methods("vera")
