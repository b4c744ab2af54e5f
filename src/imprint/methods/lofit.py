"""LoFiT, Localized Fine-Tuning on LLM Representations (Yin, Ye, Durrett, NeurIPS 2024): learn
which attention heads matter, then learn an offset vector added to those heads' outputs only.

Taken from the paper and the authors' code (fc2869/lo-fit, models/modeling_llama.py,
lofit_trainer.py): on each head's slice z_h of the attention output (before o_proj),
z_h <- (1 + A_h) * z_h + v_h; stage 1 trains the scalings A of every head with the loss
CE + lambda * sum |A| (an L1 sum, lambda 5e-4, lr 5e-3), and keeps the K heads of largest
||A_h||_2 (K = 10% of all heads where not given, the repository's default; the paper's 7B runs
keep 3%); stage 2 starts from the base model, A at 0 and frozen, and trains the offsets v of the
K heads alone (lr 1e-2, no penalty); the trained vectors start from N(0, 1e-3). Chosen: one run
holds both stages, stage 1 the first --lofit-stage1-share of the steps; stage 2's lr is
--lofit-offset-lr. The result is the offsets; applied to the base model they become a bias of
each chosen block's o_proj (o_proj(z + v) = W z + W v), so LiNeS and merging see them as weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imprint.util.rng import step_generator
from imprint.methods.base import register
from imprint.methods.lm_base import LMMethod
from imprint.util.errors import ImprintError
from imprint.util.settings import setting

log = logging.getLogger("imprint")

RESULT_FILE = "lofit.safetensors"
INIT_STD = 1e-3
LOFIT_STREAM = 21


@dataclass
class LoFiTSettings:
    lofit_heads: int | None = setting(None, "heads that get offsets (K)", shown_default="10% of all heads")
    lofit_l1: float = setting(5e-4, "stage 1's L1 weight on the head scalings (lambda)")
    lofit_stage1_share: float = setting(0.5, "share of --steps spent learning the head scalings (stage 1)")
    lofit_offset_lr: float = setting(1e-2, "learning rate of the offsets (stage 2)")

    def resolve(self) -> None:
        if not 0 < self.lofit_stage1_share < 1:
            raise ImprintError(f"--lofit-stage1-share {self.lofit_stage1_share:g}: must be within (0, 1)")
        if self.lofit_heads is not None and self.lofit_heads <= 0:
            raise ImprintError(f"--lofit-heads must be > 0, got {self.lofit_heads}")


class HeadVectors(torch.nn.Module):
    """Per block: scalings A and offsets v of every head, (L, H, d); `heads` (L, H) marks stage 2's heads."""

    def __init__(self, layers: int, heads: int, head_dim: int):
        super().__init__()
        self.scalings = torch.nn.Parameter(torch.zeros(layers, heads, head_dim))
        self.offsets = torch.nn.Parameter(torch.zeros(layers, heads, head_dim))
        self.register_buffer("heads", torch.zeros(layers, heads, dtype=torch.bool))

    def edit(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """z (..., H * d), the heads side by side -> (1 + A) z + v."""
        shape = z.shape
        z = z.view(*shape[:-1], *self.scalings.shape[1:])
        out = (1 + self.scalings[layer].to(z.dtype)) * z + self.offsets[layer].to(z.dtype)
        return out.view(shape)


def top_heads(scalings: torch.Tensor, k: int) -> torch.Tensor:
    """(L, H) mask of the k heads of largest ||A_h||_2."""
    norms = scalings.detach().float().norm(dim=-1)
    mask = torch.zeros_like(norms, dtype=torch.bool)
    mask.view(-1)[norms.flatten().topk(k).indices] = True
    return mask


@register
class LoFiT(LMMethod):
    name = "lofit"
    summary = "per-head scalings pick the heads, then offset vectors on those heads alone (LoFiT)"
    Settings = LoFiTSettings
    default_lr = 5e-3

    def __init__(self, settings=None):
        super().__init__(settings)
        self.stage1_steps, self.stage2 = 1, False

    def set_run_length(self, steps: int) -> None:
        self.stage1_steps = max(1, round(steps * self.settings.lofit_stage1_share))

    def prepare(self, lm, seed: int) -> list[torch.nn.Parameter]:
        projections = lm.attention_output_projections()
        heads = lm.config.num_attention_heads
        self.k = self.settings.lofit_heads or max(1, int(0.1 * lm.num_layers * heads))
        if self.k > lm.num_layers * heads:
            raise ImprintError(f"--lofit-heads {self.k}: the model has {lm.num_layers * heads} heads")
        self.vectors = HeadVectors(lm.num_layers, heads, lm.head_dim).to(lm.device)
        self.seed = seed
        with torch.no_grad():
            scalings = torch.randn(self.vectors.scalings.shape, generator=step_generator(seed, LOFIT_STREAM, 0))
            self.vectors.scalings.copy_(scalings * INIT_STD)
        self.vectors.offsets.requires_grad_(False)
        for layer, projection in enumerate(projections):
            projection.register_forward_pre_hook(lambda module, args, layer=layer: (self.vectors.edit(layer, args[0]),
                                                                                    *args[1:]))
        return [self.vectors.scalings, self.vectors.offsets]

    def parameter_groups(self, params):
        return [{"params": [self.vectors.scalings]},
                {"params": [self.vectors.offsets], "lr": self.settings.lofit_offset_lr}]

    def regularization(self, lm) -> torch.Tensor | None:
        if self.stage2:
            return None
        return self.settings.lofit_l1 * self.vectors.scalings.abs().sum()

    @torch.no_grad()
    def begin_step(self, lm, step: int) -> None:
        if step < self.stage1_steps or self.stage2:
            return
        self.start_stage2(top_heads(self.vectors.scalings, self.k), fresh=True)
        log.info("LoFiT stage 2 from step %d: offsets on %d heads", step, self.k)

    @torch.no_grad()
    def start_stage2(self, heads: torch.Tensor, fresh: bool) -> None:
        self.stage2 = True
        self.vectors.heads.copy_(heads)
        self.vectors.scalings.zero_()
        self.vectors.scalings.requires_grad_(False)
        self.vectors.offsets.requires_grad_(True)
        if fresh:
            generator = step_generator(self.seed, LOFIT_STREAM, 1)
            offsets = torch.randn(self.vectors.offsets.shape, generator=generator) * INIT_STD
            self.vectors.offsets.copy_(offsets.to(self.vectors.offsets.device) * heads.unsqueeze(-1))

    @torch.no_grad()
    def after_optimizer_step(self, lm, step: int) -> None:
        if self.stage2:  # only the chosen heads' offsets move (weight decay included)
            self.vectors.offsets.mul_(self.vectors.heads.unsqueeze(-1))

    def trainable_state_dict(self, lm) -> dict[str, torch.Tensor]:
        return {"scalings": self.vectors.scalings.detach().cpu().clone(),
                "offsets": self.vectors.offsets.detach().cpu().clone(),
                "heads": self.vectors.heads.to(torch.uint8).cpu(), "stage2": torch.tensor(int(self.stage2))}

    def load_trainable_state_dict(self, lm, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            if int(state["stage2"]):
                self.start_stage2(state["heads"].bool().to(self.vectors.heads.device), fresh=False)
            self.vectors.scalings.copy_(state["scalings"])
            self.vectors.offsets.copy_(state["offsets"])

    def trainable_parameter_count(self, lm) -> int:
        return self.k * lm.head_dim

    def metadata(self) -> dict:
        return {"lofit_heads": self.vectors.heads.nonzero().tolist() if self.stage2 else []}

    def save_result(self, lm, folder: Path) -> list[str]:
        if not self.stage2:
            raise ImprintError("--method lofit: the run ended in stage 1; give it more --steps")
        save_file({"offsets": (self.vectors.offsets * self.vectors.heads.unsqueeze(-1)).detach().float().cpu().contiguous(),
                   "heads": self.vectors.heads.to(torch.uint8).cpu().contiguous()}, str(Path(folder) / RESULT_FILE))
        return [RESULT_FILE]

    @classmethod
    @torch.no_grad()
    def apply_result(cls, lm, folder: Path, metadata: dict) -> None:
        saved = load_file(str(cls.result_path(folder, RESULT_FILE)))
        offsets = saved["offsets"]
        for layer, projection in enumerate(lm.attention_output_projections()):
            if not saved["heads"][layer].any():
                continue
            bias = projection.weight.float() @ offsets[layer].flatten().to(projection.weight.device)
            if projection.bias is None:
                projection.bias = torch.nn.Parameter(bias.to(projection.weight.dtype), requires_grad=False)
            else:
                projection.bias += bias.to(projection.bias.dtype)
