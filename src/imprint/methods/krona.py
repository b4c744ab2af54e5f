"""DiffuseKronA (Marjit et al., WACV 2025, arXiv 2402.17412): W' = W0 + A (x) B on the UNet's
attention W_Q, W_K, W_V, W_O, with A of a1 x a2 and B of (d_out / a1) x (d_in / a2).

Taken from the paper: the layers (all attention projections of the UNet, text encoder frozen),
the factor shapes and the paper's best (a1, a2) = (4, 64), no alpha (the official
`KronALinearLayer` has none that works), the initialisation A ~ N(0, 1/a1^2) and B = 0 (so the
update is 0 at step 0), lr 5e-4 (the paper's stable range is 1e-4 .. 1e-3), and the product
computed without forming A (x) B: (A (x) B) x = vec(A X B^T) for x reshaped to X of a2 x (d_in / a2),
which costs d_in d_out / a1 multiply-adds per token instead of d_in d_out.
Chosen here: a factor that does not divide a layer's size is replaced by its largest divisor
below it (logged once), so small models and odd widths still train. Our own layer because PEFT's
LoKr takes one factor for both sides (it cannot make A 4 x 64) and forms the full Kronecker
product in every forward.
The result is a LoKr-layout file (lokr_w1 = A, lokr_w2 = B, both full, scale 1), which every
LoKr loader (ComfyUI, A1111, LyCORIS) reads as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from imprint.methods.base import register
from imprint.methods.layers import AdapterLinear, LayerAdapterMethod, divisor_near
from imprint.util.settings import setting

log = logging.getLogger("imprint")

WEIGHT_NAME = "krona_weights.safetensors"


@dataclass
class KronASettings:
    krona_a1: int = setting(4, "rows of the small Kronecker factor A (divides each layer's output "
                            "width); the paper's best is 4", positive=True)
    krona_a2: int = setting(64, "columns of A (divides each layer's input width); the paper's best is 64",
                            positive=True)


class KronALinear(AdapterLinear):
    """y = W0 x + b + (A (x) B) x, with the Kronecker product applied factor by factor. A and B are
    named as LoKr's factors (lokr_w1, lokr_w2), the layout the result file is written in."""

    def __init__(self, base: nn.Linear, a1: int, a2: int):
        super().__init__(base)
        d_out, d_in = base.out_features, base.in_features
        if d_out % a1 or d_in % a2:
            raise ValueError(f"a1={a1} must divide {d_out} and a2={a2} must divide {d_in}")
        self.lokr_w1 = nn.Parameter(torch.randn(a1, a2) / a1)  # N(0, 1/a1^2)
        self.lokr_w2 = nn.Parameter(torch.zeros(d_out // a1, d_in // a2))

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        A, B = self.lokr_w1, self.lokr_w2
        X = x.to(A.dtype).reshape(*x.shape[:-1], A.shape[1], B.shape[1])  # (..., a2, d_in/a2)
        delta = (A @ (X @ B.T)).reshape(*x.shape[:-1], self.out_features)  # (..., a1, d_out/a1)
        return self.base_layer(x) + delta.to(x.dtype)

    def merged_weight(self) -> torch.Tensor:
        return self.base_layer.weight.float() + torch.kron(self.lokr_w1.float(), self.lokr_w2.float())


@register
class KronA(LayerAdapterMethod):
    name = "krona"
    summary = "DiffuseKronA: a Kronecker-product update A (x) B on the UNet's attention; LoKr-layout file"
    Settings = KronASettings
    default_lr = 5e-4
    WEIGHT_NAME = WEIGHT_NAME

    def make_layer(self, linear: nn.Linear, path: str) -> KronALinear:
        a1, a2 = self.settings.krona_a1, self.settings.krona_a2
        return KronALinear(linear, divisor_near(linear.out_features, a1), divisor_near(linear.in_features, a2))

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        params = super().add_trainables(family)
        a1, a2 = self.settings.krona_a1, self.settings.krona_a2
        changed = sorted({f"{l.out_features}x{l.in_features}: {tuple(l.lokr_w1.shape)}"
                          for l in self.layers.values() if tuple(l.lokr_w1.shape) != (a1, a2)})
        if changed:
            log.info("krona: (a1, a2) = (%d, %d) does not divide every layer; used %s", a1, a2, "; ".join(changed))
        return params
