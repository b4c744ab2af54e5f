"""LoHa (Hyeon-Woo et al. 2022, FedPara, arXiv 2108.06098; LyCORIS): dW = (alpha / rank)
(W1a W1b) * (W2a W2b), a Hadamard product of two rank-r factors, so rank up to r^2 for 4 r (m+n)
parameters. PEFT's layer (LoHaConfig), which follows LyCORIS' formula and initialisation (W2b = 0).
The result is PEFT's adapter layout; `imprint export` writes LyCORIS' hada_* keys."""

from __future__ import annotations

from imprint.methods.adapter import AdapterMethod, AdapterSettings
from imprint.methods.base import register


@register
class LoHa(AdapterMethod):
    name = "loha"
    summary = "PEFT LoHa (Hadamard product of two low-rank factors); PEFT adapter files, LyCORIS export"
    Settings = AdapterSettings
    default_lr = 1e-4

    def peft_config(self, part: str, family):
        from peft import LoHaConfig

        return LoHaConfig(r=self.settings.rank, alpha=self.settings.alpha,
                          target_modules=self.target_modules(part, family))
