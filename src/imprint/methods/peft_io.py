"""PEFT adapters of any type (LoRA, LoHa, LoKr, ...) saved and loaded in PEFT's own layout:
one folder per part with adapter_config.json and adapter_model.safetensors, which PEFT's
`PeftModel.from_pretrained` also reads. diffusers' LoRA file (family.save_lora) covers LoRA
only; adapter types diffusers does not load go through here."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imprint.util.errors import ImprintError

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def save_adapters(modules: dict[str, torch.nn.Module], folder: Path, adapter_name: str = "default") -> list[str]:
    """Each part's adapter -> folder/part/{adapter_config.json, adapter_model.safetensors}."""
    from peft.utils import get_peft_model_state_dict

    names = []
    for part, module in sorted(modules.items()):
        target = Path(folder) / part
        target.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(module, adapter_name=adapter_name, save_embedding_layers=False)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(target / WEIGHTS))
        module.peft_config[adapter_name].save_pretrained(str(target))
        names.append(part)
    return names


def load_adapters(modules: dict[str, torch.nn.Module], folder: Path, adapter_name: str = "default") -> None:
    """Inject the saved adapters into the parts (frozen base weights untouched) and load them."""
    from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict

    for part, module in modules.items():
        source = Path(folder) / part
        if not (source / CONFIG).is_file():
            continue
        try:
            config = PeftConfig.from_pretrained(str(source))
            state = load_file(str(source / WEIGHTS))
        except (OSError, ValueError) as e:
            raise ImprintError(f"{source}: unreadable adapter ({e}); the run folder is damaged") from e
        inject_adapter_in_model(config, module, adapter_name=adapter_name)
        result = set_peft_model_state_dict(module, state, adapter_name=adapter_name)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ImprintError(f"{source}: adapter keys that match no module, e.g. {unexpected[0]}; "
                               "is this run of another base model?")
