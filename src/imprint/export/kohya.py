"""diffusers LoRA file -> the kohya / A1111 / ComfyUI key layout, with the true alpha.

diffusers' own converter writes alpha = rank, which silently rescales an adapter trained
with alpha != rank; this one writes the alpha the run was trained with.

Names are the ones kohya's sd-scripts build and A1111 / ComfyUI look up: "lora_unet_" or
"lora_te_" + the module path in the diffusers UNet / the transformers CLIPTextModel, "." -> "_".
The text-encoder path always carries the `text_model.` level of the CLIPTextModel layout those
tools know (transformers 4: `text_model.encoder.layers.0.self_attn.q_proj`), also when the
diffusers file was written without it (transformers 5 dropped that level): a name without it,
`lora_te_encoder_layers_0_...`, is silently skipped by A1111 and ComfyUI.

The header carries the kohya `ss_*` fields those tools read, from the run's metadata.json and the
base model's configs; what cannot be known offline is left out, and no local path is written.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imprint.util.errors import ImprintError

log = logging.getLogger("imprint")

SD2_CROSS_ATTENTION_DIM = 1024  # OpenCLIP ViT-H; SD 1.x has 768
_KINDS = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}
_CROSS_K = re.compile(r"^unet\..*\.attn2\.to_[kv]\.lora_A\.weight$")


def kohya_name(module: str, family=None) -> str:
    """`unet.a.b` -> `lora_unet_a_b`; `text_encoder.[text_model.]a.b` -> `lora_te_text_model_a_b`:
    the family's key map (families/*.py `kohya_module_name`)."""
    if family is None:
        from imprint.families.sd import StableDiffusionFamily as family
    part, _, path = module.partition(".")
    if part not in family.kohya_prefixes or not path:
        raise ImprintError(f"unexpected LoRA module {module!r}; this file is not an imprint {family.name} LoRA")
    return family.kohya_module_name(part, path)


def kohya_state_dict(native: dict[str, torch.Tensor], alphas: dict[str, float], family=None) -> dict[str, torch.Tensor]:
    """`unet.a.b.lora_A.weight` -> `lora_unet_a_b.lora_down.weight` (+ `.alpha`)."""
    out = {}
    sources: dict[str, str] = {}
    for key, value in native.items():
        module, _, kind = key.rpartition(".lora_")
        direction = _KINDS.get(kind)
        if not module or direction is None:
            raise ImprintError(f"unexpected LoRA key {key!r}; expected lora_A / lora_B weights")
        name = kohya_name(module, family)
        if sources.setdefault(f"{name}.{direction}", key) != key:
            raise ImprintError(
                f"LoRA keys {sources[f'{name}.{direction}']!r} and {key!r} name the same module; "
                "the file mixes two text-encoder layouts"
            )
        part = module.partition(".")[0]
        out[f"{name}.{direction}"] = value.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alphas[part]))
    return out


# --- header metadata ---------------------------------------------------------------------

def model_display_name(base: str | None) -> str | None:
    """A hub id as is; a local folder (absolute, relative or Windows) by its basename only."""
    if not base:
        return None
    base = str(base).rstrip("/\\")
    windows = PureWindowsPath(base)
    if windows.drive or "\\" in base:
        return windows.name or None
    path = PurePosixPath(base)
    if path.is_absolute() or base.startswith((".", "~")) or Path(base).exists():
        return path.name or None
    return base  # a hub id: "owner/name"


def _read_model_config(base: str | None, filename: str) -> dict | None:
    """`<base>/<filename>` from a local folder, or from the HF cache for a hub id; never the network."""
    if not base:
        return None
    path: str | Path | None = Path(base) / filename
    if not Path(path).is_file():
        path = None
        if not PureWindowsPath(base).drive and not PurePosixPath(base).is_absolute():
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(base, filename)
                path = cached if isinstance(cached, str) else None
            except Exception:  # not a valid repo id, no cache: unknown, not an error
                path = None
    if path is None:
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _cross_attention_dim(base: str | None, native: dict[str, torch.Tensor]) -> int | None:
    """From the base UNet's config; else the input width of a cross-attention to_k / to_v adapter."""
    config = _read_model_config(base, "unet/config.json")
    if config is not None and isinstance(config.get("cross_attention_dim"), int):
        return config["cross_attention_dim"]
    for key, value in native.items():
        if _CROSS_K.match(key) and value.dim() == 2:
            return int(value.shape[1])
    return None


def _v_prediction(base: str | None) -> bool | None:
    config = _read_model_config(base, "scheduler/scheduler_config.json")
    if config is None:
        return None
    return config.get("prediction_type", "epsilon") == "v_prediction"  # diffusers' default is epsilon


def kohya_metadata(metadata: dict, native: dict[str, torch.Tensor], rank: int, alpha: float,
                   family=None) -> dict[str, str]:
    """The `ss_*` header fields kohya writes and A1111 / ComfyUI / metadata viewers read."""
    import imprint

    hp = metadata.get("hyperparameters") or {}
    base = metadata.get("base_model") or hp.get("model")
    out: dict[str, str] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": str(float(alpha)),  # kohya's --network_alpha is a float
        "imprint_version": str(metadata.get("imprint_version") or imprint.__version__),
    }
    if hp.get("lora_targets") == "attention+conv":  # kohya's LoRA-C3Lier: conv adapters, same dim / alpha
        out["ss_network_args"] = json.dumps({"conv_dim": str(int(rank)), "conv_alpha": str(float(alpha))})
    name = model_display_name(base)
    if name:
        out["ss_sd_model_name"] = name
        out["ss_base_model"] = name
    v_pred = _v_prediction(base)
    version = getattr(family, "kohya_model_version", None)
    if version is not None:  # SDXL, FLUX: the family's own version string; SD 1.x / 2.x: told apart below
        out["ss_base_model_version"] = version
    cross_dim = None if version is not None else _cross_attention_dim(base, native)
    v2 = None if cross_dim is None else cross_dim == SD2_CROSS_ATTENTION_DIM
    if v2 is not None:
        out["ss_v2"] = str(v2)
    if v_pred is not None:
        out["ss_v_parameterization"] = str(v_pred)
    if v2 is not None and v_pred is not None:  # kohya's model_util.get_model_version_str_for_sd1_sd2
        out["ss_base_model_version"] = ("sd_v2" if v2 else "sd_v1") + ("_v" if v_pred else "")
    resolution = hp.get("resolution")
    if isinstance(resolution, int):
        out["ss_resolution"] = str((resolution, resolution))  # kohya: "(512, 512)"
    steps = metadata.get("result_step", metadata.get("steps"))  # the step whose weights these are
    if isinstance(steps, int):
        out["ss_steps"] = str(steps)
    if isinstance(metadata.get("steps"), int):
        out["ss_max_train_steps"] = str(metadata["steps"])
    simple = {  # kohya key: the run hyperparameter it is (kohya writes str() of each)
        "ss_learning_rate": "lr", "ss_lr_scheduler": "lr_scheduler", "ss_lr_warmup_steps": "lr_warmup_steps",
        "ss_batch_size_per_device": "batch_size", "ss_seed": "seed", "ss_mixed_precision": "mixed_precision",
        "ss_max_grad_norm": "max_grad_norm", "ss_gradient_checkpointing": "gradient_checkpointing",
    }
    for key, field in simple.items():
        value = hp.get(field)
        if value is not None:
            out[key] = str(value)
    if hp.get("prior_preservation") and hp.get("prior_loss_weight") is not None:
        out["ss_prior_loss_weight"] = str(hp["prior_loss_weight"])
    return out


def export_kohya(run: str | Path, output: str | Path, diff: bool = False, svd_rank: int | None = None) -> Path:
    """A run's adapter as one kohya / LyCORIS .safetensors file: its own factors where the loaders
    have them; `diff` (and always for tlora): full weight deltas; `svd_rank`: deltas as LoRAs of that rank."""
    from imprint.core.run_folder import RunFolder
    from imprint.export import lycoris
    from imprint.families import family_class

    run = Path(run)
    metadata = RunFolder(run).read_metadata(flag="export")
    method = metadata.get("method")
    lora_files = ("lora", "pivotal", "disenbooth")  # DisenBooth's LoRA: the identity, what generation uses
    exportable = (*lora_files, *lycoris.ALGORITHMS, *lycoris.MERGED_ONLY)
    if method not in exportable:
        raise ImprintError(f"{run}: method {method!r} has no adapter file; kohya export needs a run of "
                           f"{', '.join(exportable)}")
    family = family_class(metadata.get("base_model", ""), metadata.get("family", "sd"))
    if not family.kohya_prefixes:
        raise ImprintError(f"{run}: model family {family.name!r} has no kohya / ComfyUI layout in this imprint")
    if Path(output).is_dir():
        raise ImprintError(f"--output {output}: is a folder; pass the .safetensors file to write")
    if svd_rank is not None and svd_rank < 1:
        raise ImprintError(f"--svd-rank {svd_rank}: must be at least 1")
    hp = metadata.get("hyperparameters") or {}
    rank = hp.get("rank") or 1
    alpha = float(hp.get("alpha") or rank)
    if svd_rank is not None:
        tensors, errors = lycoris.svd_state_dict(lycoris.merged_deltas(run, metadata, family), family, svd_rank)
        header = kohya_metadata(metadata, {}, svd_rank, float(svd_rank), family)
        log.info("rank-%d SVD of %d layers' deltas: relative error mean %.4f, max %.4f",
                 svd_rank, len(errors), sum(errors) / len(errors), max(errors))
    elif diff or method in lycoris.MERGED_ONLY:
        tensors = lycoris.diff_state_dict(lycoris.merged_deltas(run, metadata, family), family)
        header = kohya_metadata(metadata, {}, int(rank), alpha, family)
        header.update(ss_network_module="lycoris.kohya", ss_network_args=json.dumps({"algo": "full"}))
    elif method in lora_files:
        tensors, header = _lora_file(run, metadata, family)
    else:
        tensors = lycoris.lycoris_state_dict(lycoris.run_modules(run, metadata), family)
        header = kohya_metadata(metadata, {}, int(rank), alpha, family)
        args = {"algo": lycoris.ALGORITHMS[method]}
        if method == "dora":
            args.update(dora_wd="True", wd_on_output="True")
        if method == "lokr":
            args["factor"] = str(hp.get("lokr_factor", -1))
        header.update(ss_network_module="lycoris.kohya", ss_network_args=json.dumps(args))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(output)
    return output


def _lora_file(run: Path, metadata: dict, family) -> tuple[dict, dict]:
    weights = run / "pytorch_lora_weights.safetensors"
    if not weights.is_file():
        raise ImprintError(f"{weights}: missing; the run folder is incomplete")
    with safe_open(str(weights), framework="pt") as f:
        native = {k: f.get_tensor(k) for k in f.keys()}
    hp = metadata.get("hyperparameters") or {}
    rank = hp.get("rank")
    if rank is None:  # the adapters' own width
        rank = next((v.shape[0] for k, v in native.items() if k.endswith(".lora_A.weight")), None)
    if rank is None:
        raise ImprintError(f"{run}: no LoRA rank in metadata.json and no lora_A weights in {weights.name}")
    alpha = hp.get("alpha")
    alpha = float(rank if alpha is None else alpha)  # None: alpha = rank, as training did
    kohya = kohya_state_dict(native, {part: alpha for part in family.kohya_prefixes}, family)
    return kohya, kohya_metadata(metadata, native, int(rank), alpha, family)
