"""Adapter runs (dora, loha, lokr, krona) -> the LyCORIS / kohya key layout that ComfyUI and A1111
load; `--diff` (and tlora, full, which have no factors the loaders know): any run as full weight
deltas, which every loader applies exactly; `--svd-rank N`: those deltas as rank-N LoRAs.

Each module's tensors are written under `lora_unet_<diffusers path, "." -> "_">` (the family's key
map) with LyCORIS' part names, scaled so the loaders' formulas give the trained update
(their formulas, read in ComfyUI comfy/weight_adapter/*.py and A1111 extensions-builtin/Lora):
  LoRA   dW = (alpha / r) up @ down,                 r = lora_down rows
  LoHa   dW = (alpha / r) (w1a @ w1b) * (w2a @ w2b),  r = hada_w1_b rows
  LoKr   dW = (alpha / r) kron(w1, w2),               r = rows of lokr_w2_b (else lokr_w1_b); with
         both factors stored full the loaders use scale 1, so PEFT's alpha / r is folded into w1
         and no alpha is written
  diff   dW = diff
DoRA: `dora_scale` is PEFT's per-output-row magnitude m as an (out, 1) tensor, LyCORIS' own layout
since 2025 (wd_on_output): W' = m (W + dW) / ||W + dW||_row. Today's ComfyUI divides that layout
by ||W||_row instead of ||W + dW||_row, and A1111 always normalises per input column, so for an
exact DoRA in those two use --diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from imprint.util.errors import ImprintError

PEFT_KINDS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector", "hada_w1_a", "hada_w1_b",
              "hada_w2_a", "hada_w2_b", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a",
              "lokr_w2_b")
ALGORITHMS = {"dora": "lora", "loha": "loha", "lokr": "lokr", "krona": "lokr"}
MERGED_ONLY = ("tlora", "full")  # no factors the loaders know: exported as merged deltas


def _split(key: str) -> tuple[str, str]:
    for kind in PEFT_KINDS:
        if key.endswith("." + kind):
            return key[: -len(kind) - 1], kind
    raise ImprintError(f"unexpected adapter key {key!r}; not a LoRA / LoHa / LoKr tensor")


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ImprintError(f"{path}: missing; the run folder is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k).float() for k in f.keys()}
    except (OSError, ValueError) as e:
        raise ImprintError(f"{path}: unreadable ({e}); the run folder is damaged") from e


def run_modules(run: Path, metadata: dict) -> dict[str, tuple[dict[str, torch.Tensor], float]]:
    """`part.module path` -> (its tensors by PEFT part name, the scale of its update)."""
    method, hp = metadata.get("method"), metadata.get("hyperparameters") or {}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    scales: dict[str, float] = {}
    if method in ("lora", "dora", "pivotal"):
        for key, value in _read(run / "pytorch_lora_weights.safetensors").items():
            module, kind = _split(key)
            grouped.setdefault(module, {})[kind] = value
        for module, tensors in grouped.items():
            rank = hp.get("rank") or tensors["lora_A.weight"].shape[0]  # None: the adapters' own width
            scales[module] = float(hp.get("alpha") or rank) / rank      # None: alpha = rank, as training did
    elif method in ("loha", "lokr"):
        folders = sorted(p for p in (run / "adapter").iterdir() if p.is_dir()) if (run / "adapter").is_dir() else []
        if not folders:
            raise ImprintError(f"{run / 'adapter'}: missing; the run folder is incomplete")
        for folder in folders:
            config = json.loads((folder / "adapter_config.json").read_text())
            for key, value in _read(folder / "adapter_model.safetensors").items():
                module, kind = _split(key)
                grouped.setdefault(f"{folder.name}.{module}", {})[kind] = value
                scales[f"{folder.name}.{module}"] = float(config["alpha"]) / float(config["r"])
    elif method == "krona":
        for key, value in _read(run / "krona_weights.safetensors").items():
            module, kind = _split(key)
            grouped.setdefault(module, {})[kind] = value
            scales[module] = 1.0
    else:
        raise ImprintError(f"{run}: method {method!r} has no adapter file to export")
    return {m: (grouped[m], scales[m]) for m in sorted(grouped)}


def lycoris_module(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """One module's tensors under LyCORIS' part names, scaled for the loaders' formulas."""
    out: dict[str, torch.Tensor] = {}
    if "lora_A.weight" in tensors:
        out["lora_down.weight"], out["lora_up.weight"] = tensors["lora_A.weight"], tensors["lora_B.weight"]
        out["alpha"] = torch.tensor(scale * tensors["lora_A.weight"].shape[0])
        if "lora_magnitude_vector" in tensors:
            out["dora_scale"] = tensors["lora_magnitude_vector"].reshape(-1, 1)
        return out
    if "hada_w1_a" in tensors:
        out.update({k: tensors[k] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")})
        out["alpha"] = torch.tensor(scale * tensors["hada_w1_b"].shape[0])
        return out
    out.update({k: v for k, v in tensors.items() if k.startswith("lokr_")})
    if "lokr_w2_b" in tensors:
        out["alpha"] = torch.tensor(scale * tensors["lokr_w2_b"].shape[0])
    elif "lokr_w1_b" in tensors:
        out["alpha"] = torch.tensor(scale * tensors["lokr_w1_b"].shape[0])
    else:  # both factors full: the loaders apply scale 1, so the scale goes into w1
        out["lokr_w1"] = tensors["lokr_w1"] * scale
    return out


def lycoris_state_dict(modules: dict, family) -> dict[str, torch.Tensor]:
    """All modules in the kohya / LyCORIS layout."""
    out = {}
    for module, (tensors, scale) in modules.items():
        for kind, value in lycoris_module(tensors, scale).items():
            out[f"{kohya_module(module, family)}.{kind}"] = value.float().contiguous()
    return out


def kohya_module(module: str, family) -> str:
    part, _, path = module.partition(".")
    if part not in family.kohya_prefixes or not path:
        raise ImprintError(f"unexpected adapter module {module!r}; not a {family.name} model part")
    return family.kohya_module_name(part, path)


# --- merged deltas: any method, exact (`diff`) or as a LoRA of chosen rank (`--svd-rank`) -----

def merged_deltas(run: Path, metadata: dict, family_cls) -> dict[str, torch.Tensor]:
    """`part.module path` -> W' - W0 of every layer the run changes, from the base model and the
    run applied by its method's own loader (PEFT layers merged, which tests hold equal to their forward)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from imprint.methods import METHODS

    layers = (torch.nn.Linear, torch.nn.Conv2d)
    tuned = family_cls.load_pipeline(metadata.get("base_model", ""))
    before = {part: {n: m.weight.detach().float().clone() for n, m in getattr(tuned, part).named_modules()
                     if isinstance(m, layers)} for part in family_cls.kohya_prefixes}
    METHODS[metadata["method"]].load_into_pipeline(tuned, run, metadata)
    out = {}
    for part in family_cls.kohya_prefixes:
        for module in getattr(tuned, part).modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
        for name, module in getattr(tuned, part).named_modules():
            name = name.replace(".base_layer", "")
            if name in before[part] and isinstance(module, layers):
                delta = module.weight.detach().float() - before[part][name]
                if delta.abs().max() > 0:
                    out[f"{part}.{name}"] = delta
    if not out:
        raise ImprintError(f"{run}: the run changes no layer of the base model; nothing to export")
    return out


def diff_state_dict(deltas: dict[str, torch.Tensor], family) -> dict[str, torch.Tensor]:
    return {f"{kohya_module(m, family)}.diff": d.contiguous() for m, d in deltas.items()}


def svd_state_dict(deltas: dict[str, torch.Tensor], family, rank: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Each delta as its best rank-`rank` LoRA (truncated SVD, alpha = rank so the scale is 1);
    -> the tensors and each module's relative error ||dW - up down||_F / ||dW||_F."""
    out, errors = {}, []
    for module, delta in deltas.items():
        flat = delta.flatten(1)
        u, s, vh = torch.linalg.svd(flat, full_matrices=False)
        r = min(rank, s.numel())
        up, down = u[:, :r] * s[:r].sqrt(), s[:r].sqrt()[:, None] * vh[:r]
        errors.append(float((flat - up @ down).norm() / flat.norm()))
        name = kohya_module(module, family)
        if delta.dim() == 4:
            up, down = up[:, :, None, None], down.reshape(r, *delta.shape[1:])
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(r))
    return out, errors
