"""What a new user meets at the command line: --version, examples that run, one name per
concept, progress bars, and bad input of every odd kind as one line and exit code 2."""

import json

import pytest
from PIL import Image

from conftest import REPO, run_cli
from test_errors import assert_clean_error, train_args

EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.toml") if not p.name.startswith("lm-"))


def test_version(capsys):
    import imprint

    with pytest.raises(SystemExit) as exit_:
        run_cli("--version")
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"imprint {imprint.__version__}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path):
    from imprint.config import load_toml
    from imprint.image.settings import build_config, groups

    cfg = build_config(load_toml(str(path), groups()), {})
    assert cfg.run.model and cfg.data.images and cfg.run.output


def test_the_toy_example_runs(tmp_path, monkeypatch):
    from imprint.toyworld.subjects import SUBJECTS_BY_NAME, write_subject

    assert len(EXAMPLES) >= 2
    monkeypatch.chdir(REPO)  # the example's model path is relative to the repo
    photos = write_subject(SUBJECTS_BY_NAME["striped_circle"], tmp_path / "toy" / "striped_circle")
    run = tmp_path / "run"
    assert run_cli("train", "--config", REPO / "examples" / "toy-circle-lora.toml", "--images", photos,
                   "--output", run, "--steps", "2", "--num-class-images", "2", "--class-inference-steps", "2",
                   "--sample-inference-steps", "2", "--checkpoint-every", "0") == 0
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["hyperparameters"]["rank"] == 8 and meta["hyperparameters"]["batch_size"] == 4
    assert meta["hyperparameters"]["prior_preservation"] and meta["steps"] == 2


def test_train_help_points_at_files_that_exist(capsys):
    with pytest.raises(SystemExit):
        run_cli("train", "--help")
    text = capsys.readouterr().out
    for word in text.split():
        if word.endswith(".toml"):
            assert (REPO / word).is_file(), word


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory):
    from conftest import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("cli"), tiny_model, "--rank", "2", "--steps", "2")


def test_alpha_means_one_thing(finished_run):
    config = json.loads((finished_run / "config.json").read_text())
    meta = json.loads((finished_run / "metadata.json").read_text())
    assert config["alpha"] == 2.0 and meta["hyperparameters"] == config  # resolved, in both files


def test_inference_steps_has_its_own_name(finished_run, tmp_path, capsys, monkeypatch):
    import imprint.image.generate as generate_module

    calls = []
    real_sample = generate_module.sample

    def counting_sample(pipe, prompts, resolution, seed, steps, *args, **kwargs):
        calls.append(steps)
        return real_sample(pipe, prompts, resolution, seed, steps, *args, **kwargs)

    bars = []
    real_tqdm = generate_module.tqdm
    monkeypatch.setattr(generate_module, "sample", counting_sample)
    monkeypatch.setattr(generate_module, "tqdm", lambda *a, **k: bars.append(k.get("desc")) or real_tqdm(*a, **k))
    assert run_cli("generate", "--run", finished_run, "a sks toy", "--num-images", "1", "--inference-steps", "3",
                   "--output", tmp_path / "new") == 0
    assert "warning" not in capsys.readouterr().err and bars == ["generate"]
    assert run_cli("generate", "--run", finished_run, "a sks toy", "--num-images", "1", "--steps", "2",
                   "--output", tmp_path / "old") == 0
    assert "--inference-steps" in capsys.readouterr().err  # the old spelling works, with a warning
    assert calls == [3, 2]


def test_selection_scoring_has_a_progress_bar(monkeypatch):
    import imprint.image.selection as selection

    bars = []

    class Backend:
        def subject_reference(self, real):
            return None

        def subject_and_text(self, images, text, reference):
            return 0.5, 0.5

    monkeypatch.setattr("imprint.image.sampling.sample", lambda *a, **k: [])
    import tqdm.auto

    real = tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *a, **k: bars.append(k.get("desc")) or real(*a, **k))
    score = selection.backend_scorer(Backend(), [], ["a", "b"], ["a", "b"], 32, 1, 0)
    assert score(None) == (0.5, 0.5) and bars == ["scoring checkpoint"]


# --- bad input: the class the issue names, and the rest a sweep found ---------------------------
def test_image_over_the_pixel_limit(tiny_model, subject_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the 48x48 photos are > 2x over it: a "bomb"
    rc = run_cli(*train_args(tiny_model, subject_dir, tmp_path / "out"))
    assert_clean_error(capsys, rc, "pixel limit", "downscale")


@pytest.mark.parametrize("command", ["train", "generate", "toyworld", "demo"])
def test_output_that_is_a_file(command, tiny_model, subject_dir, finished_run, tmp_path, capsys):
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    args = {"train": train_args(tiny_model, subject_dir, existing),
            "generate": ["generate", "--run", finished_run, "a sks toy", "--output", existing],
            "toyworld": ["toyworld", "subjects", "--output", existing],
            "demo": ["demo", "--output", existing]}[command]
    assert_clean_error(capsys, run_cli(*args), "--output", "a-file")
    assert existing.read_text() == "keep me"


def test_output_inside_a_file(tiny_model, subject_dir, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    rc = run_cli(*train_args(tiny_model, subject_dir, tmp_path / "a-file" / "run"))
    assert_clean_error(capsys, rc, "--output")


def test_export_output_that_is_a_folder(finished_run, tmp_path, capsys):
    assert_clean_error(capsys, run_cli("export", finished_run, "--output", tmp_path), "--output", "folder")


def test_compare_with_damaged_metrics_and_a_folder_output(finished_run, tmp_path, capsys):
    (finished_run / "eval").mkdir(exist_ok=True)
    (finished_run / "eval" / "metrics.json").write_text("{not json")
    assert_clean_error(capsys, run_cli("compare", finished_run), "metrics.json", "damaged")


def test_text_files_that_are_not_utf8(tmp_path, capsys):
    from imprint.evaluate.prompts import load_prompt_file
    from imprint.util.errors import ImprintError

    (tmp_path / "p.txt").write_bytes(b"a \xff\xfe {token}\n")
    with pytest.raises(ImprintError, match="UTF-8"):
        load_prompt_file(tmp_path / "p.txt", "sks", "dog")
    (tmp_path / "run.toml").write_bytes(b'steps = "\xff"\n')
    assert_clean_error(capsys, run_cli("train", "--config", tmp_path / "run.toml"), "run.toml")


def test_damaged_run_files(tiny_model, subject_dir, finished_run, tmp_path, capsys):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "config.json").write_text("{")
    rc = run_cli(*train_args(tiny_model, subject_dir, run, "--resume"))
    assert_clean_error(capsys, rc, "config.json", "damaged")
    (run / "metadata.json").write_text("[1, 2]")
    rc = run_cli("generate", "--run", run, "a sks toy", "--output", tmp_path / "gen")
    assert_clean_error(capsys, rc, "metadata.json", "damaged")


def test_a_flag_of_another_method(tiny_model, subject_dir, tmp_path, capsys):
    rc = run_cli(*train_args(tiny_model, subject_dir, tmp_path / "out", "--method", "textual_inversion",
                             "--rank", "8"))
    assert_clean_error(capsys, rc, "--rank", "lora", "textual_inversion")


@pytest.mark.parametrize("argv,needle", [
    (["generate", "--run", "x", "p", "--output", "o", "--inference-steps", "0"], "--inference-steps"),
    (["generate", "--run", "x", "p", "--output", "o", "--num-images", "0"], "--num-images"),
    (["evaluate", "x", "--resolution", "-8"], "--resolution"),
    (["methods", "--name", "nope"], "--name nope"),
])
def test_bad_numbers_and_names(argv, needle, capsys):
    assert_clean_error(capsys, run_cli(*argv), needle)
