"""Regenerate the test copy of DreamBench in this folder from a full DreamBench folder.

    python tests/data/dreambench/make.py ../shared/dreambench

For each subject, every photo is downscaled so its short side is 96 px and saved as JPEG at
quality 85. The file's EXIF block (and ICC profile, if it has one) is carried over unchanged,
so the tests still see the original orientation tag. The stored pixels are not rotated.
prompts_and_classes.txt and LICENSE.md are copied byte for byte. README.md (the attribution)
is written by hand and left as it is.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

SUBJECTS = ["dog", "cat", "backpack", "teapot", "bear_plushie"]
TEXT_FILES = ["prompts_and_classes.txt", "LICENSE.md"]
SHORT_SIDE = 96
QUALITY = 85
HERE = Path(__file__).resolve().parent


def downscale(source: Path, target: Path) -> None:
    with Image.open(source) as image:
        image.load()
        exif = image.info.get("exif")
        icc = image.info.get("icc_profile")
        w, h = image.size
        scale = SHORT_SIDE / min(w, h)
        size = (max(SHORT_SIDE, round(w * scale)), max(SHORT_SIDE, round(h * scale)))
        small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    options = {"quality": QUALITY}
    if exif:
        options["exif"] = exif
    if icc:
        options["icc_profile"] = icc
    small.save(target, "JPEG", **options)


def make(source: Path, dest: Path) -> list[Path]:
    if source.resolve() == dest.resolve():
        raise SystemExit(f"{source}: the source is the destination; pass the full DreamBench folder")
    missing = [name for name in SUBJECTS + TEXT_FILES if not (source / name).exists()]
    if missing:
        raise SystemExit(f"{source}: not a DreamBench folder, missing {', '.join(missing)}")
    written = []
    for subject in SUBJECTS:
        out = dest / subject
        if out.exists():
            shutil.rmtree(out)  # no stale files from an earlier run
        out.mkdir(parents=True)
        for photo in sorted((source / subject).glob("*.jpg")):
            downscale(photo, out / photo.name)
            written.append(out / photo.name)
    for name in TEXT_FILES:
        shutil.copyfile(source / name, dest / name)
        written.append(dest / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a full DreamBench folder, e.g. ../shared/dreambench")
    parser.add_argument("--dest", type=Path, default=HERE, help="where to write (default: this folder)")
    args = parser.parse_args(argv)
    written = make(args.source, args.dest)
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files, {total / 1024:.1f} KiB, to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
