"""The toy world's renderer and held-out subjects."""

import random

import numpy as np
import pytest

from conftest import run_cli
from imprint.image.data import load_subject_images
from imprint.toyworld.render import (BACKGROUNDS, COLOURS, PATTERNS, POSITIONS, SHAPES, Scene,
                                      random_scene, render)
from imprint.toyworld.subjects import SUBJECTS


def test_sizes_of_the_world():
    assert len(SHAPES) >= 8 and len(COLOURS) >= 8 and len(PATTERNS) >= 4 and len(BACKGROUNDS) >= 8
    assert len(SUBJECTS) >= 10 and len({s.name for s in SUBJECTS}) == len(SUBJECTS)


def test_render_is_deterministic():
    scene = Scene("star", "red", "striped", "sand", "top left", "small")
    a, b = np.asarray(render(scene, 7)), np.asarray(render(scene, 7))
    assert a.shape == (64, 64, 3) and (a == b).all()
    assert (a != np.asarray(render(scene, 8))).any()  # the seed jitters


@pytest.mark.parametrize("attribute", ["shape", "colour", "pattern", "background", "position"])
def test_each_attribute_changes_the_pixels(attribute):
    base = Scene("square", "blue", "plain", "grass", "centre", "large")
    options = {"shape": SHAPES, "colour": list(COLOURS), "pattern": PATTERNS,
               "background": list(BACKGROUNDS), "position": list(POSITIONS)}[attribute]
    images = [np.asarray(render(Scene(**{**base.__dict__, attribute: o}), 0)).astype(int) for o in options]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 1.0, (options[i], options[j])


def test_object_is_where_the_prompt_says():
    scene = Scene("circle", "red", "plain", "plain", "top left", "small")
    image = np.asarray(render(scene, 0)).astype(int)
    redness = image[..., 0] - image[..., 1]
    ys, xs = np.nonzero(redness > 60)
    assert xs.mean() < 28 and ys.mean() < 28


def test_prompts_in_dreambench_style():
    assert Scene("star", "red", "striped", "sand", "top left").prompt() == "a red striped star on the beach, top left"
    assert Scene("circle", "orange", "plain", "snow").prompt("sks", with_position=False) == "an orange sks circle in the snow"
    rng = random.Random(0)
    assert all(random_scene(rng).prompt().startswith(("a ", "an ")) for _ in range(50))


def test_subjects_written_and_loaded_by_the_data_pipeline(tmp_path, capsys):
    assert run_cli("toyworld", "subjects", "--output", tmp_path) == 0
    for subject in SUBJECTS:
        loaded = load_subject_images(tmp_path / subject.name, 64)  # class.txt is skipped
        assert len(loaded.images) == 5
        pixels = [np.asarray(im) for im in loaded.images]
        assert len({p.tobytes() for p in pixels}) == 5  # five different photos
        assert (tmp_path / subject.name / "class.txt").read_text().strip() == subject.shape


def test_subject_photos_are_stable():
    # the same subject renders the same photos in every session (its folder is reproducible)
    first = [np.asarray(render(s, seed)) for s, seed in SUBJECTS[0].photo_scenes()]
    again = [np.asarray(render(s, seed)) for s, seed in SUBJECTS[0].photo_scenes()]
    assert all((a == b).all() for a, b in zip(first, again))


def test_domain_set_shares_shape_and_emblem_and_varies_the_rest(tmp_path):
    from imprint.toyworld.subjects import domain_scenes, write_domain

    subject = SUBJECTS[1]
    scenes = [scene for scene, _ in domain_scenes(subject)]
    assert {(s.shape, s.emblem) for s in scenes} == {(subject.shape, subject.emblem)}
    assert len({s.colour for s in scenes}) == 8 and len({s.background for s in scenes}) > 1
    folder = write_domain(subject, tmp_path / "domain")
    loaded = load_subject_images(folder, 64)
    assert len(loaded.images) == 10 and len(list((folder / "masks").glob("*.png"))) == 10
    assert [np.asarray(render(s, seed)) for s, seed in domain_scenes(subject)][3].tobytes() == \
        np.asarray(loaded.images[3]).tobytes()  # reproducible


# --- the evaluator and its metric backend ------------------------------------------------------
from imprint.toyworld.backend import ToyWorldBackend, parse_prompt, toyworld_prompts  # noqa: E402


def test_parse_prompt():
    assert parse_prompt("a red striped star on the beach, top left") == {
        "shape": "star", "colour": "red", "pattern": "striped", "background": "sand",
        "position": "top left"}
    assert parse_prompt("a blue circle in the snow") == {"shape": "circle", "colour": "blue",
                                                         "background": "snow"}
    assert parse_prompt("a star") == {"shape": "star"}


def test_toyworld_prompts():
    prompts = toyworld_prompts("sks", "star")
    assert len(prompts) == 25 and len(set(prompts)) == 25
    assert all("sks star" in p for p in prompts)
    assert all(parse_prompt(p.replace("sks ", ""))["shape"] == "star" for p in prompts)


def test_shipped_evaluator_reads_fresh_renders():
    from imprint.toyworld.evaluator import WEIGHTS, accuracy_on_fresh_renders, load_evaluator

    assert WEIGHTS.stat().st_size <= 5 * 2**20
    accuracy = accuracy_on_fresh_renders(load_evaluator(), count=300, seed=2024)
    assert min(accuracy.values()) >= 0.9, accuracy  # the benchmark measures the 0.95 bar on more


def test_backend_fidelity_separates_subjects():
    backend = ToyWorldBackend()
    photos = {s.name: [render(sc, seed) for sc, seed in s.photo_scenes()] for s in SUBJECTS[:4]}
    same = backend.score_real(photos[SUBJECTS[0].name])["fidelity"]["mean"]
    for other in SUBJECTS[1:4]:
        scores = backend.score({"p": photos[other.name]}, {"p": "a thing"}, photos[SUBJECTS[0].name], [])
        assert scores.summary["fidelity"]["mean"] < same - 0.2, other.name


def test_backend_alignment_reads_prompted_attributes():
    backend = ToyWorldBackend()
    rng = random.Random(5)
    scenes = [random_scene(rng) for _ in range(12)]
    generated = {s.prompt(): [render(s, i)] for i, s in enumerate(scenes)}
    texts = {p: p for p in generated}
    right = backend.score(generated, texts, [render(scenes[0], 0)], [])
    # the same images scored against prompts of other scenes read back far fewer attributes
    shuffled = dict(zip(generated, list(generated.values())[1:] + list(generated.values())[:1]))
    wrong = backend.score(shuffled, texts, [render(scenes[0], 0)], [])
    assert right.summary["alignment"]["mean"] >= 0.9
    assert wrong.summary["alignment"]["mean"] < right.summary["alignment"]["mean"] - 0.4


def test_evaluate_with_the_toyworld_backend(tiny_model, tmp_path):
    import json

    from conftest import FAST
    from imprint.toyworld.subjects import write_subject

    subject = SUBJECTS[0]
    photos = write_subject(subject, tmp_path / subject.name)
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", photos, "--class-name", subject.class_name,
                   "--steps", "2", "--checkpoint-every", "0", "--output", run, *FAST) == 0
    assert run_cli("evaluate", run, "--metrics", "toyworld", "--images-per-prompt", "1",
                   "--inference-steps", "2") == 0
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["backend"] == "toyworld" and len(result["prompts"]) == 25
    for key in ("fidelity", "alignment", "pres", "div"):
        assert key in result["summary"] and key in result["baseline"]["summary"]
    assert result["real_images"]["summary"]["fidelity"]["mean"] > 0.5  # the subject's photos agree
    assert "fidelity" in (run / "eval" / "report.html").read_text()


def test_segmenter_trains_into_a_clipseg_folder_that_auto_masks_load(tmp_path):
    from imprint.image.auto_masks import load_segmenter, segment
    from imprint.toyworld.segmenter import train_segmenter

    folder = train_segmenter(tmp_path / "seg", steps=3, batch_size=4)
    processor, network = load_segmenter(str(folder))
    mask = segment(processor, network, render(Scene("star", "red", "plain", "grass")), "star", 0.4)
    assert mask.size == (64, 64) and mask.mode == "L"


def test_shipped_segmenter_finds_the_object():
    """The shipped toy segmenter's masks on fresh renders, thresholded as --auto-masks does."""
    from imprint.toyworld.segmenter import mask_iou

    assert mask_iou(count=64) > 0.75  # 0.84 over 256 renders when trained
