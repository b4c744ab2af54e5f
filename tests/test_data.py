import logging

import numpy as np
import pytest
from PIL import Image

from conftest import DREAMBENCH
from imprint.image.data import images_to_tensor, load_image_file, load_subject_images
from imprint.util.errors import ImprintError

SUBJECTS = ["dog", "cat", "backpack", "teapot", "bear_plushie"]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_dreambench_subjects_load(subject):
    loaded = load_subject_images(DREAMBENCH / subject, 64)
    assert 4 <= len(loaded.images) <= 6
    for image in loaded.images:
        assert image.size == (64, 64) and image.mode == "RGB"
    pixels = images_to_tensor(loaded.images)
    assert pixels.shape == (len(loaded.images), 3, 64, 64)
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.std() > 0.05


def test_dreambench_exif_is_read_and_applied():
    # bear_plushie's photos are iPhone JPEGs with an EXIF block; its orientation tag is read
    # and applied (it says 1, upright, so the loaded photo equals the raw pixels)
    path = DREAMBENCH / "bear_plushie" / "00.jpg"
    with Image.open(path) as raw:
        assert raw.getexif().get(0x0112) == 1
        raw_small = raw.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    loaded = load_image_file(path, 32)
    assert np.abs(np.asarray(loaded, float) - np.asarray(raw_small, float)).mean() < 2.0


def _with_orientation(tmp_path, orientation):
    # a portrait photo (tall) stored sideways, with the tag that tells viewers to rotate it
    image = Image.new("RGB", (60, 40), "white")
    image.paste((255, 0, 0), (0, 0, 20, 40))  # red band on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rot{orientation}.jpg"
    image.save(path, exif=exif, quality=95)
    return path


def test_exif_rotation_applied(tmp_path):
    path = _with_orientation(tmp_path, 6)  # 6: rotate 90 degrees clockwise to view
    loaded = load_image_file(path)
    assert loaded.size == (40, 60)
    top = np.asarray(loaded)[:10].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 80  # the red band is on top once upright


def test_modes_are_normalised(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (10, 10, 30, 30))
    rgba.save(tmp_path / "a.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "b.jpg")
    Image.new("L", (40, 40), 128).save(tmp_path / "c.png")
    Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(tmp_path / "d.png")  # 16-bit grey
    Image.new("P", (40, 40), 3).save(tmp_path / "e.png")
    Image.new("RGB", (80, 40), (0, 200, 0)).save(tmp_path / "f.webp")
    loaded = load_subject_images(tmp_path, 32)
    arrays = [np.asarray(im) for im in loaded.images]
    assert all(im.mode == "RGB" and im.size == (32, 32) for im in loaded.images)
    assert tuple(arrays[0][0, 0]) == (255, 255, 255)  # transparency became white
    assert tuple(arrays[0][16, 16]) == (0, 0, 255)
    assert arrays[1][16, 16, 0] > 200 and arrays[1][16, 16, 1] < 60  # CMYK red -> RGB red
    assert tuple(arrays[2][5, 5]) == (128, 128, 128)
    assert tuple(arrays[3][5, 5]) == (255, 255, 255)  # 16-bit full scale -> 8-bit white
    assert abs(int(arrays[5][5, 5, 1]) - 200) < 8


def test_non_images_skipped_with_one_warning(tmp_path, caplog):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    with caplog.at_level(logging.WARNING, logger="imprint"):
        loaded = load_subject_images(tmp_path, 32)
    assert len(loaded.images) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # a.txt is a.png's caption (--captions), not a stray file
    assert len(warnings) == 1 and "a.txt" not in warnings[0] and ".DS_Store" in warnings[0]


def test_every_rejected_file_is_named(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ImprintError) as err:
        load_subject_images(tmp_path, 32)
    message = str(err.value)
    assert "empty.jpg" in message and "0-byte" in message and "broken.png" in message
    assert "\n" not in message


def test_empty_folder(tmp_path):
    with pytest.raises(ImprintError, match="no images"):
        load_subject_images(tmp_path, 32)
