"""LoKr (Yeh et al. 2024, LyCORIS, arXiv 2309.14859): dW = (alpha / rank) W1 (x) W2, a Kronecker
product of a small factor W1 (out_l x in_m) and a larger W2 (out_k x in_n), W2 low-rank
(W2a W2b) when the rank is under half its size. PEFT's layer (LoKrConfig), with LyCORIS'
initialisation (W1 random, W2 zero) chosen so runs match the tool users export to. The result is
PEFT's adapter layout; `imprint export` writes LyCORIS' lokr_* keys."""

from __future__ import annotations

from dataclasses import dataclass

from imprint.methods.adapter import AdapterMethod, AdapterSettings
from imprint.methods.base import register
from imprint.util.settings import setting


@dataclass
class LoKrSettings(AdapterSettings):
    lokr_factor: int = setting(-1, "size of the small Kronecker factor's dimensions (LyCORIS' factor); "
                               "-1: the divisor pair nearest the square root, as LyCORIS' default")
    decompose_both: bool = setting(False, "also factor the small Kronecker factor into two rank-r matrices")


@register
class LoKr(AdapterMethod):
    name = "lokr"
    summary = "PEFT LoKr (Kronecker product of a small and a low-rank factor); PEFT adapter files, LyCORIS export"
    Settings = LoKrSettings
    default_lr = 1e-4

    def peft_config(self, part: str, family):
        from peft import LoKrConfig

        return LoKrConfig(r=self.settings.rank, alpha=self.settings.alpha, init_weights="lycoris",
                          decompose_factor=self.settings.lokr_factor, decompose_both=self.settings.decompose_both,
                          target_modules=self.target_modules(part, family))
