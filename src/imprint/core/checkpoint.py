"""Checkpoints: written atomically (temporary folder, then rename), pickle-free (safetensors
for tensors, JSON for the rest), the last K kept.

A checkpoint holds the trainable weights, the optimizer state, the LR scheduler state, the
step and, when on, the EMA weights (ema.safetensors). Every random draw of a task comes from
a generator seeded by (seed, stream, step), so the step alone restores the RNG streams and
the data order.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imprint.util.errors import ImprintError
from imprint.util.files import fsync_dir as _fsync_dir

PREFIX = "checkpoint-"


NEST = "/"  # joins the keys of a dict nested in a parameter's state: "3.outer/inner"


def optimizer_to_flat(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state -> (tensors for safetensors, JSON-able rest).

    Any torch.optim.Optimizer's state fits: AdamW's tensors, Prodigy's int steps and the floats
    it adds to param_groups (d, d_max, d_numerator, ...; JSON keeps a float's every bit), and
    bitsandbytes' 8-bit state, which nests a dict of quantised buffers in each parameter's state
    and shares one quantisation map between all parameters (safetensors refuses tensors that
    share memory, so a repeated one is stored as a copy)."""
    tensors, scalars, storages = {}, {}, set()

    def put(name: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                put(f"{name}{NEST}{key}", inner)
        elif torch.is_tensor(value):
            tensor = value.detach().cpu().contiguous()
            storage = tensor.untyped_storage().data_ptr()
            if storage in storages:
                tensor = tensor.clone()
            storages.add(storage)
            tensors[name] = tensor
        else:
            scalars[name] = value

    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            put(f"{index}.{key}", value)
    for group in state_dict["param_groups"]:
        for key, value in group.items():
            if not _json_exact(value):
                raise ValueError(f"optimizer param_groups[{key!r}] holds a {type(value).__name__}, "
                                 "which a checkpoint's JSON cannot keep exactly")
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _json_exact(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_json_exact(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in list(tensors.items()) + list(rest["scalars"].items()):
        index, key = flat.split(".", 1)
        target = state.setdefault(int(index), {})
        *outer, last = key.split(NEST)
        for name in outer:
            target = target.setdefault(name, {})
        target[last] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(output: Path, step: int, trainable: dict[str, torch.Tensor],
                    optimizer_state: dict, scheduler_state: dict, extra: dict, keep: int,
                    before_rename=None, protect: set[int] = frozenset(),
                    more_tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """`more_tensors`: further files of the checkpoint, {name: tensors} -> name.safetensors."""
    root = output / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step}"
    tmp = root / f".tmp-{PREFIX}{step}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    save_file(trainable, str(tmp / "trainable.safetensors"))
    opt_tensors, opt_rest = optimizer_to_flat(optimizer_state)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    for name, tensors in (more_tensors or {}).items():
        save_file(tensors, str(tmp / f"{name}.safetensors"))
    with open(tmp / "state.json", "w") as f:
        json.dump({"step": step, "optimizer": opt_rest, "lr_scheduler": scheduler_state, **extra},
                  f, indent=2, default=str)
    for name in os.listdir(tmp):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    if before_rename:
        before_rename()  # test hook: a kill here leaves only a temporary folder behind
    if final.exists():  # a run resumed from an earlier step writes this step again
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    prune(root, keep, protect)
    return final


def list_checkpoints(output: Path) -> list[Path]:
    root = output / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and p.name[len(PREFIX):].isdigit() and (p / "state.json").is_file()]
    return sorted(found, key=step_of)


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def prune(root: Path, keep: int, protect: set[int] = frozenset()) -> None:
    """Keep the newest `keep` checkpoints, and any whose step is protected (the best one)."""
    for stale in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    checkpoints = list_checkpoints(root.parent)
    for old in checkpoints[:-keep] if keep > 0 else []:
        if step_of(old) not in protect:
            shutil.rmtree(old, ignore_errors=True)


def find_resume_checkpoint(output: Path, resume: str) -> Path | None:
    """'latest' -> the newest complete checkpoint of the run (None if there is none yet)."""
    if resume == "latest":
        checkpoints = list_checkpoints(output)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ImprintError(
            f"--resume {resume}: not a checkpoint folder (no state.json); pass 'latest' or a "
            f"folder under {output / 'checkpoints'}"
        )
    return path


def load_more_tensors(path: Path, name: str) -> dict[str, torch.Tensor] | None:
    """A further file of a checkpoint (see save_checkpoint), or None where it has none."""
    file = Path(path) / f"{name}.safetensors"
    return load_file(str(file)) if file.is_file() else None


def load_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """-> (state.json contents, trainable tensors, optimizer state_dict)."""
    try:
        with open(path / "state.json") as f:
            state = json.load(f)
        trainable = load_file(str(path / "trainable.safetensors"))
        optimizer = optimizer_from_flat(load_file(str(path / "optimizer.safetensors")),
                                        state["optimizer"])
    except (OSError, ValueError, KeyError) as e:
        raise ImprintError(
            f"{path}: damaged checkpoint ({type(e).__name__}: {e}); delete it to resume from the "
            "one before"
        ) from e
    return state, trainable, optimizer
