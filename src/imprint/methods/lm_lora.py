"""LoRA for language models (Hu et al. 2021, arXiv 2106.09685): W + (alpha / rank) B A on every
Linear of the decoder blocks (PEFT's "all-linear": attention and MLP, not lm_head); DoRA
(arXiv 2402.09353) and rsLoRA's alpha / sqrt(rank) scaling (arXiv 2312.03732) as settings.
The layers are PEFT's; the result is a PEFT adapter folder (`PeftModel.from_pretrained` loads it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from imprint.methods.base import register
from imprint.methods.lm_base import LMMethod
from imprint.util.errors import ImprintError
from imprint.util.settings import setting

ADAPTER_FOLDER = "adapter"
PEFT_PREFIX = "base_model.model."


@dataclass
class LMLoRASettings:
    rank: int = setting(16, "LoRA rank r of B A", positive=True)
    alpha: float | None = setting(None, "LoRA alpha: the update is scaled by alpha / rank (alpha / sqrt(rank) "
                                  "with --rslora)", shown_default="2 x rank")
    lora_dropout: float = setting(0.05, "dropout on the LoRA branch's input (seeded per step)")
    target_modules: str = setting("all-linear", "the Linear layers that get LoRA: all-linear (every Linear in "
                                  "the blocks, as QLoRA), or comma-separated names such as q_proj,v_proj")
    dora: bool = setting(False, "DoRA: a learned magnitude per output row beside the LoRA direction")
    rslora: bool = setting(False, "rank-stabilised scaling alpha / sqrt(rank)")

    def resolve(self) -> None:
        if self.alpha is None:
            self.alpha = 2.0 * self.rank
        if not 0 <= self.lora_dropout < 1:
            raise ImprintError(f"--lora-dropout {self.lora_dropout:g}: must be within [0, 1)")


@register
class LMLoRA(LMMethod):
    name = "lora"
    summary = "PEFT LoRA (DoRA, rsLoRA) on every Linear of the blocks; a PEFT adapter folder"
    Settings = LMLoRASettings
    default_lr = 2e-4
    adapters_off_is_base = True

    def peft_config(self):
        from peft import LoraConfig

        s = self.settings
        targets = s.target_modules if s.target_modules == "all-linear" else [t.strip() for t in s.target_modules.split(",")]
        return LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.lora_dropout, target_modules=targets,
                          use_dora=s.dora, use_rslora=s.rslora, task_type="CAUSAL_LM")

    def prepare(self, lm, seed: int) -> list[torch.nn.Parameter]:
        from peft import inject_adapter_in_model

        torch.manual_seed(seed)  # LoRA's A is drawn from the global generator
        try:
            inject_adapter_in_model(self.peft_config(), lm.model)
        except ValueError as e:
            raise ImprintError(f"--target-modules {self.settings.target_modules}: {e}") from e
        params = []
        for name, p in lm.model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
                p.data = p.data.float()  # adapters train in float32 over any base precision
                params.append(p)
        return params

    def save_result(self, lm, folder: Path) -> list[str]:
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        target = Path(folder) / ADAPTER_FOLDER
        target.mkdir(parents=True, exist_ok=True)
        config = self.peft_config()
        config.base_model_name_or_path = lm.name
        # the adapter was injected into the model itself, not wrapped in a PeftModel: the keys get
        # the PeftModel prefix, the layout PeftModel.from_pretrained reads
        state = get_peft_model_state_dict(lm.model)
        save_file({PEFT_PREFIX + k: v.detach().float().cpu().contiguous() for k, v in state.items()},
                  str(target / "adapter_model.safetensors"))
        config.save_pretrained(str(target))
        return [ADAPTER_FOLDER]

    @classmethod
    def apply_result(cls, lm, folder: Path, metadata: dict) -> None:
        from peft import PeftModel

        source = cls.result_path(folder, f"{ADAPTER_FOLDER}/adapter_config.json").parent
        lm.model = PeftModel.from_pretrained(lm.model, str(source)).merge_and_unload()
