"""Subject masks: reading (modes, errors), alignment with the photo through crop, buckets and
--flip, the masked loss against a direct computation, --auto-masks on a tiny CLIPSeg, and the
toy world's true masks."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from conftest import FAST, run_cli
from imprint.image.data import fit_to_size
from imprint.image.masks import fit_mask, load_masks, read_mask, to_latent_size
from imprint.objectives import Batch, Objective
from imprint.objectives.denoise import Denoise
from imprint.objectives.mask import MaskedLoss, MaskLossSettings, mask_weight
from imprint.objectives.prior import PriorPreservation, PriorSettings
from imprint.util.errors import ImprintError

RED, BLUE = (220, 20, 20), (20, 40, 200)


def photo_and_mask(folder, name, size, box, mask_folder=None):
    """A blue photo with a red box, and the box's mask (same stem) in mask_folder."""
    image = Image.new("RGB", size, BLUE)
    ImageDraw.Draw(image).rectangle(box, fill=RED)
    image.save(folder / f"{name}.png")
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    if mask_folder is not None:
        mask.save(mask_folder / f"{name}.png")
    return image, mask


def folders(tmp_path):
    photos, masks = tmp_path / "subject", tmp_path / "masks"
    photos.mkdir(parents=True)
    masks.mkdir()
    # square, landscape and portrait, the box off centre so that a crop or a flip shows
    photo_and_mask(photos, "a", (64, 64), (4, 10, 30, 40), masks)
    photo_and_mask(photos, "b", (96, 64), (2, 8, 40, 30), masks)
    photo_and_mask(photos, "c", (64, 96), (30, 60, 60, 90), masks)
    return photos, masks


def red(image: Image.Image) -> np.ndarray:
    a = np.asarray(image, dtype=np.int32)
    return (a[..., 0] > 150) & (a[..., 2] < 100)


def test_mask_modes_and_errors(tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (20, 10)).save(photo)
    # RGB: non-zero in any channel is subject; a cut-out (RGBA): its alpha, whatever its colours
    rgb = Image.new("RGB", (20, 10))
    rgb.putpixel((3, 4), (0, 0, 9))
    rgb.save(tmp_path / "rgb.png")
    assert np.argwhere(np.asarray(read_mask(tmp_path / "rgb.png", (20, 10), photo))).tolist() == [[4, 3]]
    cutout = Image.new("RGBA", (20, 10), (255, 255, 255, 0))
    cutout.putpixel((5, 6), (0, 0, 0, 200))
    cutout.save(tmp_path / "cut.png")
    assert np.argwhere(np.asarray(read_mask(tmp_path / "cut.png", (20, 10), photo))).tolist() == [[6, 5]]
    with pytest.raises(ImprintError, match=r"rgb.png: the mask is 20x10 but its photo p.png is 30x10"):
        read_mask(tmp_path / "rgb.png", (30, 10), photo)
    Image.new("L", (20, 10)).save(tmp_path / "empty.png")
    with pytest.raises(ImprintError, match="empty.png: the mask is empty"):
        read_mask(tmp_path / "empty.png", (20, 10), photo)

    photos, masks = folders(tmp_path / "f")
    (masks / "b.png").unlink()                      # missing
    (masks / "c.png").write_bytes(b"not a png")     # unreadable
    with pytest.raises(ImprintError) as error:
        load_masks(sorted(photos.iterdir()), masks)
    message = str(error.value)
    assert "2 mask(s) rejected" in message and "no mask for photo b.png" in message
    assert f"{masks / 'c.png'}: not a readable mask image" in message
    with pytest.raises(ImprintError, match="folder not found"):
        load_masks(sorted(photos.iterdir()), tmp_path / "nowhere")


def test_masks_follow_the_photos_crop_and_flip(tmp_path):
    photos, masks = folders(tmp_path)
    for name, size in (("a", (32, 32)), ("b", (32, 32)), ("b", (40, 24)), ("c", (24, 40))):
        image = Image.open(photos / f"{name}.png")
        mask = read_mask(masks / f"{name}.png", image.size, photos / f"{name}.png")
        fitted = fit_mask(mask, *size)[0].numpy()
        inside = red(fit_to_size(image, *size))
        assert fitted.shape == inside.shape[:2]
        # the red box of the cropped photo is where the cropped mask is (edge pixels aside)
        assert ((fitted > 0.5) == inside).mean() > 0.97
        # --flip mirrors the fitted photo (SubjectTask.make_bucket) and the fitted mask (batches)
        mirrored = red(fit_to_size(image, *size).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        assert ((np.flip(fitted, -1) > 0.5) == mirrored).mean() > 0.97 and (mirrored != inside).any()
    # at latent size: the subject's share of each 8 x 8 block
    pixels = torch.zeros(1, 1, 16, 16)
    pixels[..., :8, :4] = 1
    torch.testing.assert_close(to_latent_size(pixels, (2, 2)), torch.tensor([[[[0.5, 0.0], [0.0, 0.0]]]]))


def test_masked_loss_is_the_masked_mean_of_the_error():
    torch.manual_seed(0)
    prediction, target = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    masks = torch.tensor([[1.0, 0.0], [0.5, 0.0]]).expand(3, 1, 2, 2).clone()
    masks[2] = 1  # the class row: no mask
    batch = Batch(latents=target, noise=target, timesteps=torch.zeros(3), noisy=target, target=target,
                  conditioning={}, roles=["instance", "instance", "class"], masks=masks)
    for w in (0.0, 0.25):
        objective = Objective([Denoise(), MaskedLoss(MaskLossSettings(mask_loss_weight=w)),
                               PriorPreservation(PriorSettings(prior_loss_weight=1.0))])
        parts = objective.losses(batch, family=None, prediction=prediction)
        error = (prediction - target) ** 2
        weight = masks + w * (1 - masks)
        direct = [(weight[i] * error[i]).sum() / (weight[i].sum() * 4) for i in range(3)]  # 4 channels
        torch.testing.assert_close(parts["denoise"], (direct[0] + direct[1]) / 2)
        torch.testing.assert_close(parts["prior"], error[2].mean())  # weight 1 on the class row
    assert MaskedLoss(MaskLossSettings(mask_loss_weight=1.0)).enabled() is False
    torch.testing.assert_close(mask_weight(torch.ones(1, 1, 2, 2), 0.0), torch.ones(1, 1, 2, 2))


def test_task_caches_masks_by_bucket_and_flips_them_with_their_photo(tiny_model, tmp_path, monkeypatch):
    from imprint.core.precision import make_accelerator
    from imprint.image.data import load_subject_images
    from imprint.image.settings import build_config
    from imprint.image.train import SubjectTask

    photos, masks = folders(tmp_path)
    cfg = build_config({}, {"model": str(tiny_model), "images": str(photos), "class_name": "toy",
                            "output": str(tmp_path / "run"), "resolution": 64, "buckets": True, "flip": True,
                            "masks": str(masks), "mask_loss_weight": 0.0, "batch_size": 2,
                            "prior_preservation": True, "num_class_images": 2, "class_inference_steps": 2})
    subject = load_subject_images(photos, 64)
    task = SubjectTask(cfg, make_accelerator("no"), subject, None, load_masks(subject.paths, masks))
    monkeypatch.setattr(task.family, "sample_latents", lambda mean, std, generator: mean.clone())
    for bucket in task.buckets:
        assert bucket.masks.shape == (len(bucket.images), 1, *bucket.mean.shape[-2:])
        for position, index in enumerate(bucket.images):  # each photo's mask, through its bucket's crop
            name = subject.paths[index].stem
            expected = to_latent_size(fit_mask(Image.open(masks / f"{name}.png"), *bucket.size)[None],
                                      tuple(bucket.mean.shape[-2:]))
            torch.testing.assert_close(bucket.masks[position], expected[0])
    orientations = set()
    for step in range(8):
        first = task.batches(step, 0)[0]
        again = task.batches(step, 0)[0]  # a function of (seed, step): what a resumed run draws
        torch.testing.assert_close(first.latents, again.latents)
        torch.testing.assert_close(first.masks, again.masks)
        bucket = next(b for b in task.buckets if b.mean.shape[-2:] == first.latents.shape[-2:])
        for row, role in enumerate(first.roles):
            if role == "class":
                assert bool((first.masks[row] == 1).all())
                continue
            position = next(i for i in range(len(bucket.images))
                            if torch.equal(first.latents[row], bucket.mean[i])
                            or torch.equal(first.latents[row], bucket.flipped[0][i]))
            flipped = torch.equal(first.latents[row], bucket.flipped[0][position])
            orientations.add(flipped)
            expected = bucket.masks[position].flip(-1) if flipped else bucket.masks[position]
            torch.testing.assert_close(first.masks[row], expected)
        loss, parts = task.loss(step, 0)
        assert torch.isfinite(loss)
    assert orientations == {True, False}


def test_mask_flags_end_to_end_and_errors(tiny_model, tmp_path, capsys):
    photos, masks = folders(tmp_path)
    base = ["train", "--model", tiny_model, "--images", photos, "--class-name", "toy", *FAST, "--steps", "2",
            "--checkpoint-every", "0", "--no-final-samples"]
    assert run_cli(*base, "--output", tmp_path / "run", "--masks", masks, "--mask-loss-weight", "0",
                   "--flip") == 0
    assert (tmp_path / "run" / "metadata.json").exists()
    capsys.readouterr()
    # a mask weight without masks; a missing mask: one line each, nothing written
    assert run_cli(*base, "--output", tmp_path / "r2", "--mask-loss-weight", "0") == 2
    assert "--mask-loss-weight 0 needs subject masks: add --masks DIR or --auto-masks" in capsys.readouterr().err
    (masks / "a.png").unlink()
    assert run_cli(*base, "--output", tmp_path / "r3", "--masks", masks) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("imprint: error:")]
    assert len(lines) == 1 and "no mask for photo a.png" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "r3").exists()


def test_auto_masks_with_a_tiny_clipseg(tiny_model, tmp_path, monkeypatch):
    """The plumbing (load, segment, save, reuse, train on them) with a random CLIPSeg: its masks
    are arbitrary; that a real CLIPSeg finds the subject is not tested here."""
    from imprint.image import auto_masks
    from imprint.tiny import save_clipseg_model

    segmenter = save_clipseg_model(tmp_path / "clipseg")
    photos, _ = folders(tmp_path)
    run = tmp_path / "run"
    args = ["train", "--model", tiny_model, "--images", photos, "--class-name", "toy", *FAST, "--steps", "2",
            "--checkpoint-every", "1", "--no-final-samples", "--output", run, "--auto-masks",
            "--auto-mask-model", segmenter, "--auto-mask-threshold", "0.3", "--mask-loss-weight", "0.1"]
    assert run_cli(*args) == 0
    made = sorted(p.name for p in (run / "masks").iterdir())
    assert made == ["a.png", "b.png", "c.png"]
    for name in made:
        mask = Image.open(run / "masks" / name)
        assert mask.size == Image.open(photos / name).size and set(np.unique(np.asarray(mask))) <= {0, 255}
    # segmented once: a resume reads them back and never loads the model
    (run / "metadata.json").unlink()
    monkeypatch.setattr(auto_masks, "load_segmenter", lambda *a, **k: pytest.fail("segmented again"))
    assert run_cli(*args, "--resume") == 0


def test_auto_mask_model_that_does_not_load_is_one_line(tiny_model, tmp_path, capsys):
    photos, _ = folders(tmp_path)
    rc = run_cli("train", "--model", tiny_model, "--images", photos, "--class-name", "toy", *FAST,
                 "--output", tmp_path / "run", "--auto-masks", "--auto-mask-model", tmp_path / "no-model")
    err = capsys.readouterr().err
    assert rc == 2 and "--auto-mask-model" in err and "cannot load a CLIPSeg model" in err and "Traceback" not in err


def test_toyworld_subjects_come_with_their_true_masks(tmp_path):
    from imprint.toyworld.subjects import SUBJECTS_BY_NAME, write_subject

    folder = write_subject(SUBJECTS_BY_NAME["emblem_star"], tmp_path / "emblem_star")
    photos = sorted(folder.glob("*.png"))
    masks = load_masks(photos, folder / "masks")  # the format --masks reads
    for photo, mask in zip(photos, masks):
        inside = np.asarray(mask) > 0
        object_red = red(Image.open(photo))
        # the red star is inside its mask (or on its edge: pixels the star covers less than half
        # of are outside); a third of the mask or more is red star (the emblem is the rest)
        near = np.asarray(mask.filter(ImageFilter.MaxFilter(3))) > 0
        assert object_red.sum() > 20 and object_red[~near].sum() <= 0.01 * object_red.sum()
        assert object_red[inside].mean() > 0.3 and 0.02 < inside.mean() < 0.6
