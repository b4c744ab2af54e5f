"""Atomic writes: a file is written under a temporary name, synced, then renamed into place,
so a kill at any moment leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_sibling(path: Path, suffix: str = ".tmp") -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{suffix}")


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = temporary_sibling(path)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_safetensors_atomic(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    tmp = temporary_sibling(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cache_root() -> Path:
    """imprint's cache: $IMPRINT_CACHE, else $XDG_CACHE_HOME/imprint (~/.cache/imprint)."""
    root = os.environ.get("IMPRINT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "imprint")
    return Path(root)


def make_folder(path: str | Path, flag: str) -> Path:
    """mkdir -p, with a one-line error naming the flag where a file is in the way."""
    from imprint.util.errors import ImprintError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise ImprintError(f"{flag} {path}: cannot make the folder, a file is in the way ({e.filename}); "
                           "choose another folder") from e
    except PermissionError as e:
        raise ImprintError(f"{flag} {path}: permission denied; choose a folder you can write") from e
    return path
