"""Every bad input: one line naming the problem and the fix, exit code 2, no traceback,
nothing already written lost."""

import subprocess
import sys

import pytest

from conftest import FAST, run_cli


def train_args(model, images, out, *extra):
    return ["train", "--model", model, "--images", images, "--class-name", "toy",
            "--steps", "2", "--output", out, *FAST, *extra]


def assert_clean_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("imprint: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_empty_folder(tiny_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = run_cli(*train_args(tiny_model, tmp_path / "empty", tmp_path / "out"))
    assert_clean_error(capsys, rc, "--images", "no images")


@pytest.mark.parametrize("name,content,needle", [
    ("zero.jpg", b"", "0-byte"),
    ("corrupt.png", b"\x89PNG\r\n\x1a\n garbage", "not a readable image"),
])
def test_bad_image_files(name, content, needle, tiny_model, subject_dir, tmp_path, capsys):
    (subject_dir / name).write_bytes(content)
    rc = run_cli(*train_args(tiny_model, subject_dir, tmp_path / "out"))
    assert_clean_error(capsys, rc, name, needle, "remove it")


def test_missing_model_path(subject_dir, tmp_path, capsys):
    rc = run_cli(*train_args(tmp_path / "no" / "such-model", subject_dir, tmp_path / "out"))
    assert_clean_error(capsys, rc, "--model", "path not found")


def test_folder_that_is_not_a_model(subject_dir, tmp_path, capsys):
    rc = run_cli(*train_args(subject_dir, subject_dir, tmp_path / "out"))
    assert_clean_error(capsys, rc, "--model", "model_index.json")


def test_unknown_method(tiny_model, subject_dir, tmp_path, capsys):
    rc = run_cli(*train_args(tiny_model, subject_dir, tmp_path / "out", "--method", "dora2"))
    assert_clean_error(capsys, rc, "--method dora2", "lora")


def test_run_of_another_base_model(tiny_model, other_model, subject_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(*train_args(tiny_model, subject_dir, run, "--checkpoint-every", "0")) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc = run_cli("generate", "--run", run, "--model", other_model, "a sks toy",
                 "--output", tmp_path / "gen", "--inference-steps", "2")
    assert_clean_error(capsys, rc, "--model", "not the base model", str(tiny_model))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_finished_run_is_not_overwritten(tiny_model, subject_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(*train_args(tiny_model, subject_dir, run, "--checkpoint-every", "0")) == 0
    capsys.readouterr()
    weights = (run / "pytorch_lora_weights.safetensors").read_bytes()
    rc = run_cli(*train_args(tiny_model, subject_dir, run))
    assert_clean_error(capsys, rc, "--output", "finished run")
    assert (run / "pytorch_lora_weights.safetensors").read_bytes() == weights


def test_generate_on_a_folder_that_is_no_run(tmp_path, capsys):
    rc = run_cli("generate", "--run", tmp_path, "a sks toy", "--output", tmp_path / "gen")
    assert_clean_error(capsys, rc, "--run", "metadata.json")


def test_export_needs_a_lora_run(tmp_path, capsys):
    rc = run_cli("export", tmp_path, "--output", tmp_path / "x.safetensors")
    assert_clean_error(capsys, rc, "metadata.json")


def test_bad_config_file(tmp_path, capsys):
    (tmp_path / "run.toml").write_text("stepz = 3\n")
    rc = run_cli("train", "--config", tmp_path / "run.toml")
    assert_clean_error(capsys, rc, "run.toml", "stepz")


def test_console_exit_code_and_debug(tmp_path):
    (tmp_path / "empty").mkdir()
    args = [sys.executable, "-m", "imprint.cli", "train", "--model", str(tmp_path / "nope"),
            "--images", str(tmp_path / "empty"), "--class-name", "toy", "--output", str(tmp_path / "o")]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "imprint: error: --images" in plain.stderr
    debug = subprocess.run([args[0], *args[1:3], "--debug", *args[3:]], capture_output=True,
                           text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
