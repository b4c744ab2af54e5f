"""LoRA (Hu et al. 2021, arXiv 2106.09685) as used for DreamBooth: low-rank updates
W + (alpha / rank) B A on the attention projections of the UNet, and of the text encoder
when asked; with `--lora-targets attention+conv` also on the UNet's ResNet convolutions (as
LyCORIS' LoCon), which reach the resolution levels that have no attention. The layers are
PEFT's; the result is diffusers' own LoRA file."""

from __future__ import annotations

from pathlib import Path

from imprint.methods.adapter import AdapterMethod, AdapterSettings
from imprint.methods.base import register

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@register
class LoRA(AdapterMethod):
    name = "lora"
    summary = "PEFT LoRA on the denoiser's attention (and the text encoder's); diffusers LoRA file"
    Settings = AdapterSettings
    default_lr = 1e-4
    use_dora = False

    def peft_config(self, part: str, family):
        from peft import LoraConfig

        return LoraConfig(r=self.settings.rank, lora_alpha=self.settings.alpha, init_lora_weights="gaussian",
                          target_modules=self.target_modules(part, family), use_dora=self.use_dora)

    def save_result(self, family, folder: Path) -> list[str]:
        from peft.utils import get_peft_model_state_dict

        layers, configs = {}, {}
        for part in family.parts(self.adapter_parts()):
            module = family.modules[part]
            layers[part] = {k: v.detach().float().cpu().contiguous()
                            for k, v in get_peft_model_state_dict(module, save_embedding_layers=False).items()}
            configs[part] = module.peft_config["default"].to_dict()
        family.save_lora(folder, layers, configs)
        return [WEIGHT_NAME]

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        pipe.load_lora_weights(str(folder), weight_name=WEIGHT_NAME)
