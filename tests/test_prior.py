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
