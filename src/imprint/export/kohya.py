"""diffusers LoRA file -> the kohya / A1111 / ComfyUI key layout, with the true alpha.

diffusers' own converter writes alpha = rank, which silently rescales an adapter trained
with alpha != rank; this one writes the alpha the run was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imprint.util.errors import ImprintError

PREFIXES = {"unet.": "lora_unet_", "text_encoder.": "lora_te_"}


def kohya_state_dict(native: dict[str, torch.Tensor], alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    """`unet.a.b.lora_A.weight` -> `lora_unet_a_b.lora_down.weight` (+ `.alpha`)."""
    out = {}
    for key, value in native.items():
        for prefix, kohya_prefix in PREFIXES.items():
            if key.startswith(prefix):
                break
        else:
            raise ImprintError(f"unexpected LoRA key {key!r}; this file is not an imprint SD LoRA")
        module, _, kind = key[len(prefix):].rpartition(".lora_")
        name = kohya_prefix + module.replace(".", "_")
        direction = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}.get(kind)
        if direction is None:
            raise ImprintError(f"unexpected LoRA key {key!r}; expected lora_A / lora_B weights")
        out[f"{name}.{direction}"] = value.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alphas[prefix.rstrip(".")]))
    return out


def export_kohya(run: str | Path, output: str | Path) -> Path:
    run = Path(run)
    meta_path = run / "metadata.json"
    if not meta_path.is_file():
        raise ImprintError(f"{run}: no metadata.json; pass a finished imprint run folder")
    with open(meta_path) as f:
        metadata = json.load(f)
    if metadata.get("method") != "lora":
        raise ImprintError(
            f"{run}: method {metadata.get('method')!r} has no LoRA file; kohya export needs a lora run"
        )
    weights = run / "pytorch_lora_weights.safetensors"
    if not weights.is_file():
        raise ImprintError(f"{weights}: missing; the run folder is incomplete")
    with safe_open(str(weights), framework="pt") as f:
        native = {k: f.get_tensor(k) for k in f.keys()}
    alpha = float(metadata["hyperparameters"]["alpha"])
    kohya = kohya_state_dict(native, {"unet": alpha, "text_encoder": alpha})
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    save_file(kohya, str(tmp), metadata={
        "ss_network_module": "networks.lora", "ss_network_dim": str(metadata["hyperparameters"]["rank"]),
        "ss_network_alpha": str(alpha), "ss_base_model": str(metadata.get("base_model")),
        "imprint_version": str(metadata.get("imprint_version")),
    })
    tmp.replace(output)
    return output
