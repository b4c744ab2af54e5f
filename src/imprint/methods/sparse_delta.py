"""Sparse weight deltas: the changed entries of each weight (flat indices and their differences
from the base), one safetensors file. Deltas add up: applying two is theta_0 + phi_1 + phi_2, the
composition of composable sparse fine-tuning (Ansell et al., ACL 2022); LIFT's and LT-SFT's runs
are such files, and `imprint lm compose` applies several."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imprint.util.errors import ImprintError

INDICES, VALUES = ".indices", ".values"


def sparse_delta(tuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name.indices, name.values} of every entry where tuned differs from base."""
    out = {}
    for name, value in tuned.items():
        diff = (value.detach().float().cpu() - base[name].float().cpu()).flatten()
        changed = diff.nonzero().flatten()
        if changed.numel():
            out[name + INDICES] = changed.to(torch.int64)
            out[name + VALUES] = diff[changed].contiguous()
    return out


def save_sparse_delta(delta: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    save_file(delta, str(path), metadata=metadata)


def delta_size(delta: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in delta.items() if k.endswith(VALUES))


@torch.no_grad()
def apply_sparse_delta(model: torch.nn.Module, path: Path, scale: float = 1.0) -> int:
    """Add the file's deltas (times `scale`) to the model's weights; -> entries changed."""
    if not Path(path).is_file():
        raise ImprintError(f"{path}: sparse delta file not found; the run folder is damaged")
    delta = load_file(str(path))
    params = dict(model.named_parameters())
    changed = 0
    for key, indices in delta.items():
        if not key.endswith(INDICES):
            continue
        name = key[: -len(INDICES)]
        if name not in params:
            raise ImprintError(f"{path}: weight {name} is not in the model; is this a run of another base model?")
        flat = params[name].data.view(-1)
        values = delta[name + VALUES].to(flat.dtype).to(flat.device)
        flat.index_add_(0, indices.to(flat.device), scale * values)
        changed += indices.numel()
    return changed
