import json

from imprint.image.prior import ensure_class_images


class CountingPipeline:
    """Stands in for the base model: counts the images it makes (a plain one per generator)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, prompt, height, width, num_inference_steps, generator):
        from PIL import Image

        assert len(prompt) == len(generator)  # a batch: one generator per image
        self.calls += len(generator)

        class Out:
            images = [Image.new("RGB", (width, height), (int(g.initial_seed() % 255),) * 3) for g in generator]

        return Out()


def test_generated_once_then_reused_and_topped_up(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPRINT_CACHE", str(tmp_path / "cache"))
    pipe = CountingPipeline()
    args = dict(folder=None, model="m", prompt="a photo of dog", resolution=16, seed=0, steps=2,
                make_pipeline=lambda: pipe)
    first = ensure_class_images(count=3, **args)
    assert pipe.calls == 3 and len(first) == 3
    manifest = json.loads((first[0].parent / "manifest.json").read_text())
    assert manifest["model"] == "m" and manifest["prompt"] == "a photo of dog"
    assert manifest["resolution"] == 16 and manifest["seed"] == 0 and manifest["count"] == 3
    again = ensure_class_images(count=3, **args)
    assert pipe.calls == 3 and again == first  # reused, nothing generated
    more = ensure_class_images(count=5, **args)
    assert pipe.calls == 5 and more[:3] == first  # only the missing two generated
    other = ensure_class_images(count=2, **{**args, "resolution": 32})
    assert pipe.calls == 7 and other[0].parent != first[0].parent  # other settings, other folder


def test_user_folder_used_as_is(tmp_path):
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (20, 20)).save(tmp_path / f"{i}.jpg")
    paths = ensure_class_images(tmp_path, 3, "m", "p", 16, 0, 2, make_pipeline=lambda: 1 / 0)
    assert len(paths) == 3


def test_precision_recorded_and_never_mixed(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPRINT_CACHE", str(tmp_path / "cache"))
    pipe = CountingPipeline()
    args = dict(folder=None, count=2, model="m", prompt="a photo of dog", resolution=16, seed=0, steps=2,
                make_pipeline=lambda: pipe)
    full = ensure_class_images(**args)
    half = ensure_class_images(**args, precision="bf16")
    assert pipe.calls == 4 and half[0].parent != full[0].parent  # bf16 images never stand in for fp32 ones
    assert json.loads((half[0].parent / "manifest.json").read_text())["precision"] == "bf16"
    assert json.loads((full[0].parent / "manifest.json").read_text())["precision"] == "fp32"
    # a given folder made in one precision is regenerated, not reused, for another
    given = tmp_path / "given"
    ensure_class_images(**{**args, "folder": given})
    ensure_class_images(**{**args, "folder": given}, precision="bf16")
    assert pipe.calls == 8
    assert json.loads((given / "manifest.json").read_text())["precision"] == "bf16"


def test_generation_precision_choices(monkeypatch):
    import pytest
    import torch

    from imprint.core import precision
    from imprint.util.errors import ImprintError

    cpu = torch.device("cpu")
    assert precision.generation_precision("auto", "bf16", cpu, "--class-precision") == "bf16"  # the run's
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: True)
    assert precision.generation_precision("auto", "no", cpu, "--class-precision") == "bf16"
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: False)
    assert precision.generation_precision("auto", "no", cpu, "--class-precision") == "fp32"
    assert precision.generation_precision("bf16", "no", cpu, "--class-precision") == "bf16"
    with pytest.raises(ImprintError, match=r"--class-precision fp32: the frozen model is held in bf16"):
        precision.generation_precision("fp32", "bf16", cpu, "--class-precision")
    with pytest.raises(ImprintError, match=r"--class-precision fp16 needs a CUDA GPU"):
        precision.generation_precision("fp16", "no", cpu, "--class-precision")
    with pytest.raises(ImprintError, match=r"--class-precision half: choose one of auto, fp32, bf16, fp16"):
        precision.generation_precision("half", "no", cpu, "--class-precision")
    a = torch.randn(4, 4)
    with precision.generation_autocast(cpu, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with precision.generation_autocast(cpu, "fp32"):
        assert (a @ a).dtype == torch.float32


def test_training_renders_class_images_in_the_chosen_precision(tiny_model, subject_dir, tmp_path, monkeypatch):
    import torch

    import imprint.image.train as train_module
    from imprint.core.precision import make_accelerator
    from imprint.image.data import load_subject_images
    from imprint.image.settings import build_config

    seen = []
    real = train_module.ensure_class_images

    def spy(*args, **kwargs):
        seen.append((args[-1], torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "ensure_class_images", spy)
    for choice, autocast in (("bf16", (True, torch.bfloat16)), ("fp32", (False,))):
        cfg = build_config({}, {"model": str(tiny_model), "images": str(subject_dir), "class_name": "toy",
                                "output": str(tmp_path / choice), "resolution": 32, "prior_preservation": True,
                                "num_class_images": 2, "class_inference_steps": 2, "class_precision": choice})
        task = train_module.SubjectTask(cfg, make_accelerator("no"), load_subject_images(subject_dir, 32))
        assert seen[-1][0] == choice and seen[-1][1:1 + len(autocast)] == autocast
        assert torch.isfinite(task.class_mean).all()
