"""DreamBench evaluation: metric arithmetic by hand, prompts, the report, selection."""

import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from conftest import DREAMBENCH, FAST, run_cli
from imprint.util.errors import ImprintError
from imprint.evaluate.metrics import (cosine_matrix, diversity, harmonic_reward, leave_one_out,
                                      mean_interval, similarity_to_reference)
from imprint.evaluate.prompts import (LIVE_PROMPTS, OBJECT_PROMPTS, dreambench_prompts, is_live,
                                      remove_identifier)


# --- arithmetic on fixed embeddings ----------------------------------------------------------
def test_similarity_equals_hand_computed_cosines():
    gen = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    real = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    s2 = 2 ** -0.5
    # image 0 vs reals: cos 1, 0, 1/sqrt2 ; image 1: 1/sqrt2, 1/sqrt2, 1
    expected = torch.tensor([(1 + 0 + s2) / 3, (s2 + s2 + 1) / 3])
    torch.testing.assert_close(similarity_to_reference(gen, real), expected)
    torch.testing.assert_close(cosine_matrix(gen, real)[1, 2], torch.tensor(1.0))


def test_leave_one_out_excludes_self():
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s2 = 2 ** -0.5
    torch.testing.assert_close(leave_one_out(real), torch.tensor([s2 / 2, s2 / 2, s2]))


def test_pres_and_div_on_constructed_inputs():
    real = torch.tensor([[1.0, 0.0, 0.0]])
    copies = torch.tensor([[2.0, 0.0, 0.0], [5.0, 0.0, 0.0]])  # the subject, twice
    unrelated = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # orthogonal class images
    assert similarity_to_reference(copies, real).mean() == pytest.approx(1.0)  # prior overwritten
    assert similarity_to_reference(unrelated, real).mean() == pytest.approx(0.0)  # prior kept
    assert diversity(copies) == pytest.approx(0.0)
    assert diversity(unrelated) == pytest.approx(1.0)
    assert diversity(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])) == pytest.approx((1 + 2 + 1) / 3)


def test_mean_interval():
    entry = mean_interval([1.0, 2.0, 3.0, 4.0])
    sd = (sum((x - 2.5) ** 2 for x in [1, 2, 3, 4]) / 3) ** 0.5
    assert entry["mean"] == 2.5 and entry["n"] == 4
    assert entry["high"] - entry["mean"] == pytest.approx(1.96 * sd / 2)
    assert mean_interval([]) == {"mean": None, "low": None, "high": None, "n": 0}


def test_harmonic_reward():
    # I = 0.6 -> 0.8, T = 0.2 -> 0.6; lambda 0.5: 1 / (0.5/0.8 + 0.5/0.6)
    assert harmonic_reward(0.6, 0.2, 0.5) == pytest.approx(1 / (0.5 / 0.8 + 0.5 / 0.6))
    assert harmonic_reward(0.6, 0.2, 1.0) == pytest.approx(0.8)
    assert harmonic_reward(0.6, 0.2, 0.0) == pytest.approx(0.6)


# --- prompts ---------------------------------------------------------------------------------
def test_identifier_removed_class_kept():
    assert remove_identifier("a sks dog on the beach", "sks") == "a dog on the beach"
    assert remove_identifier("a red sks backpack", "sks") == "a red backpack"
    assert remove_identifier("a <sks> toy that asks", "<sks>") == "a toy that asks"


def test_live_or_object_by_class():
    assert is_live("dog") and is_live("cat") and not is_live("backpack")
    live, obj = dreambench_prompts("sks", "dog"), dreambench_prompts("sks", "teapot")
    assert len(live) == len(obj) == 25
    assert "a sks dog wearing a santa hat" in live and "a sks dog on top of a mirror" not in live
    assert "a sks teapot on top of a mirror" in obj and not any("hat" in p for p in obj)


def test_prompt_lists_match_the_dreambench_file():
    text = (DREAMBENCH / "prompts_and_classes.txt").read_text()
    objects, live = text.split("Object Prompts")[1].split("Live Subject Prompts")
    for block, templates in ((objects, OBJECT_PROMPTS), (live, LIVE_PROMPTS)):
        found = [p.replace("{0}", "{token}").replace("{1}", "{class_name}")
                 for p in re.findall(r"'([^']+)'\.format", block)]
        assert found == templates


# --- the command end to end on tiny models -----------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(tiny_model, metric_models, tmp_path_factory):
    from conftest import draw_subject

    root = tmp_path_factory.mktemp("eval")
    (root / "subject").mkdir()
    for i in range(3):
        draw_subject(root / "subject" / f"{i}.png", i)
    run = root / "run"
    assert run_cli("train", "--model", tiny_model, "--images", root / "subject", "--class-name", "toy",
                   "--lr", "1e-2", "--steps", "3", "--checkpoint-every", "0", "--output", run, *FAST) == 0
    (root / "prompts.txt").write_text("a {token} {class_name} on the beach\n# a comment\n"
                                      "a red {token} {class_name}\n")
    dino, clip = metric_models
    assert run_cli("evaluate", run, "--prompts", root / "prompts.txt", "--images-per-prompt", "2",
                   "--inference-steps", "2", "--dino-model", dino, "--clip-model", clip) == 0
    return run


def test_metrics_json(evaluated):
    result = json.loads((evaluated / "eval" / "metrics.json").read_text())
    for key in ("dino", "clip_i", "clip_t", "pres", "div"):
        entry = result["summary"][key]
        assert entry["low"] <= entry["mean"] <= entry["high"], key
        assert result["baseline"]["summary"][key]["mean"] is not None
    assert set(result["real_images"]["summary"]) == {"dino", "clip_i"}
    assert [r["prompt"] for r in result["prompts"]] == ["a sks toy on the beach", "a red sks toy"]
    assert result["prompts"][0]["text_prompt"] == "a toy on the beach"
    assert len(result["images"]) == 4
    for record in result["images"]:
        assert (evaluated / "eval" / record["path"]).is_file()
        assert {"prompt", "dino", "clip_i", "clip_t"} <= set(record)
    assert "dino" in result["protocol"] and "clip_t" in result["protocol"]


def test_report_holds_every_image_and_score(evaluated):
    result = json.loads((evaluated / "eval" / "metrics.json").read_text())
    page = (evaluated / "eval" / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    expected = [r["path"] for r in result["images"]] + result["real_images"]["images"]
    assert set(expected) <= set(sources)
    assert not any(s.startswith(("/", "http")) for s in sources)  # relative: opens offline
    for row in result["prompts"]:
        for key in ("dino", "clip_i", "clip_t", "div"):
            assert f"{row[key]:.3f}" in page
    for key in result["metrics"]:  # the run's and the base model's summary
        for summary in (result["summary"], result["summary"]["base"]):
            if summary[key]["mean"] is not None:
                assert f"{summary[key]['mean']:.3f}" in page


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    """The first Chromium-family browser on PATH. Without one, the test is skipped, unless
    IMPRINT_REQUIRE_BROWSER=1 (set by .ci/run) makes it fail."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        reason = (f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
                  "install one, e.g. apt-get install chromium (.ci/run does)")
        if os.environ.get("IMPRINT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"IMPRINT_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return browser


def test_report_renders_images_in_headless_chromium(evaluated, tmp_path):
    browser = find_browser()
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
         "--virtual-time-budget=5000", "--dump-dom", (evaluated / "eval" / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    shown = re.search(r'data-images-shown="(\d+)"', out.stdout)
    total = re.search(r'data-images-total="(\d+)"', out.stdout)
    assert shown and total, out.stderr[-2000:]
    assert int(total.group(1)) >= 4 + 4 + 3 and shown.group(1) == total.group(1)


def test_compare(evaluated, tmp_path, capsys):
    capsys.readouterr()
    assert run_cli("compare", evaluated, evaluated, "--output", tmp_path / "c.html") == 0
    table = capsys.readouterr().out
    assert table.count("| lora |") == 2 and "DINO" in table and "base model" in table
    assert "<table" in (tmp_path / "c.html").read_text()


# --- best-checkpoint selection ---------------------------------------------------------------
def test_selection_picks_highest_reward(tiny_model, subject_dir, tmp_path):
    from imprint.image.settings import build_config
    from imprint.image.train import train

    # a deterministic scorer: subject similarity peaks at the 2nd of 4 scorings
    calls = []
    table = [(0.1, 0.3), (0.8, 0.3), (0.5, 0.3), (0.2, 0.3)]

    def scorer(pipe):
        calls.append(1)
        return table[len(calls) - 1]

    run = tmp_path / "run"
    cfg = build_config({}, dict(model=str(tiny_model), images=str(subject_dir), class_name="toy",
                                output=str(run), steps=8, checkpoint_every=2, keep_checkpoints=1,
                                select_best=0.5, lr=1e-2, resolution=32, sample_inference_steps=2,
                                final_samples=False))
    train(cfg, scorer=scorer)
    meta = json.loads((run / "metadata.json").read_text())
    assert len(calls) == 4  # steps 2, 4, 6 and the final 8
    assert meta["selection"]["best_step"] == 4 and meta["result_step"] == 4
    rewards = {int(k): v["reward"] for k, v in meta["selection"]["scores"].items()}
    assert max(rewards, key=rewards.get) == 4
    # the result is checkpoint 4's weights (kept despite keep_checkpoints=1), not the last step's
    from safetensors.torch import load_file

    best = load_file(run / "checkpoints" / "checkpoint-4" / "trainable.safetensors")
    result = load_file(run / "pytorch_lora_weights.safetensors")
    key = next(k for k in result if k.endswith("to_q.lora_B.weight"))
    name = "unet." + key[len("unet."):].replace(".lora_B.weight", ".lora_B.default.weight")
    torch.testing.assert_close(result[key], best[name])


def test_early_stop_patience_ends_the_run_and_keeps_the_best(tiny_model, subject_dir, tmp_path):
    from imprint.image.settings import build_config
    from imprint.image.train import train

    table = iter([(0.1, 0.3), (0.8, 0.3), (0.5, 0.3), (0.2, 0.3), (0.9, 0.3), (0.9, 0.3)])
    run = tmp_path / "run"
    cfg = build_config({}, dict(model=str(tiny_model), images=str(subject_dir), class_name="toy",
                                output=str(run), steps=12, checkpoint_every=2, select_best=0.5,
                                early_stop_patience=2, lr=1e-2, resolution=32, sample_inference_steps=2,
                                final_samples=False))
    train(cfg, scorer=lambda pipe: next(table))
    meta = json.loads((run / "metadata.json").read_text())
    # best at step 4; steps 6 and 8 do not beat it: stopped after step 8, never reaching 10's 0.9
    assert sorted(map(int, meta["selection"]["scores"])) == [2, 4, 6, 8]
    assert meta["steps"] == 8 and meta["stopped_early"] and meta["result_step"] == 4
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()][-1] == 8
    with pytest.raises(ImprintError, match="--early-stop-patience stops on the checkpoints' reward"):
        build_config({}, dict(model="m", images="i", class_name="toy", output="o", early_stop_patience=2))


def test_selection_with_the_dreambench_scorer(tiny_model, metric_models, subject_dir, tmp_path):
    dino, clip = metric_models
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", subject_dir, "--class-name", "toy",
                   "--steps", "4", "--checkpoint-every", "2", "--select-best", "0.5",
                   "--select-prompts", "2", "--dino-model", dino, "--clip-model", clip,
                   "--no-final-samples", "--output", run, *FAST) == 0
    meta = json.loads((run / "metadata.json").read_text())
    scores = meta["selection"]["scores"]
    assert set(scores) == {"2", "4"} and meta["result_step"] in (2, 4)
    for entry in scores.values():
        assert -1 <= entry["image_similarity"] <= 1 and -1 <= entry["text_alignment"] <= 1
        assert 0 < entry["reward"] <= 1


def test_evaluate_with_a_missing_metric_model(evaluated, tmp_path, capsys):
    rc = run_cli("evaluate", evaluated, "--dino-model", tmp_path / "nope", "--inference-steps", "1",
                 "--images-per-prompt", "1")
    err = capsys.readouterr().err
    assert rc == 2 and "--dino-model" in err and "Traceback" not in err


def test_blip_t_is_the_itc_cosine_and_reaches_the_report(evaluated, metric_models, tmp_path):
    """ClassDiffusion's BLIP-T: the ITC cosine, checked against BLIP's parts computed directly."""
    import json

    import torch.nn.functional as F
    from PIL import Image

    from conftest import draw_subject
    from imprint.evaluate.dreambench import DreamBenchBackend
    from imprint.tiny import save_blip_model

    blip = save_blip_model(tmp_path / "blip")
    dino, clip = metric_models
    backend = DreamBenchBackend(dino_model=str(dino), clip_model=str(clip), blip_model=str(blip))
    images = [Image.open(draw_subject(tmp_path / f"{i}.png", i, size=40)) for i in range(3)]
    scores = backend.blip_text_alignment(images, "a red toy")
    model, processor = backend.blip, backend.blip_processor
    inputs = processor(images=images, text=["a red toy"], return_tensors="pt", padding=True)
    with torch.no_grad():
        image = F.normalize(model.vision_proj(model.vision_model(pixel_values=inputs["pixel_values"])[0][:, 0]), dim=-1)
        text = F.normalize(model.text_proj(model.text_encoder(input_ids=inputs["input_ids"],
                                                              attention_mask=inputs["attention_mask"])[0][:, 0]), dim=-1)
    torch.testing.assert_close(scores, (image @ text.T)[:, 0])
    assert backend.metrics[-1] == "blip_t"
    # the command: --blip-model adds the column to metrics.json and the report (on a copy of the run)
    import shutil

    run = tmp_path / "run"
    shutil.copytree(evaluated, run, ignore=shutil.ignore_patterns("eval"))
    (tmp_path / "prompts.txt").write_text("a {token} {class_name} on the beach\n")
    assert run_cli("evaluate", run, "--prompts", tmp_path / "prompts.txt", "--images-per-prompt", "2",
                   "--inference-steps", "2", "--dino-model", dino, "--clip-model", clip, "--blip-model", blip) == 0
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["metrics"][-1] == "blip_t" and -1 <= result["summary"]["blip_t"]["mean"] <= 1
    assert "blip_t" in result["prompts"][0] and "blip_t" in result["images"][0]
    assert "BLIP-T" in (run / "eval" / "report.html").read_text()
