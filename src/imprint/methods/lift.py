"""LIFT, Low-rank Informed Sparse Fine-Tuning (Liu et al., ICML 2025): only the principal weights
train, the entries of largest magnitude in a low-rank approximation of each matrix.

Taken from the paper and the authors' code (zihanghliu/LIFT, src/sparseAdam.py and
src/utils/model_utils.py): per Linear of the blocks W (m x n; lm_head, embeddings and norms
frozen), W' = U_r S_r V_r^T with r = --lift-filter-rank; the mask is the top k of |W'| with
k = min((m + n) * rank, m * n), the parameter budget of a LoRA of rank `rank`; masks are
recomputed from the current weights every --lift-update-interval steps; Adam's moments are kept
for the masked entries only, and at a refresh an entry that stays keeps its moments while a new
one starts from zero; the step count (bias correction) is per matrix and never reset; betas
(0.9, 0.95), eps 1e-6 (the repository's). Chosen: the exact SVD (torch.linalg.svd) of each
matrix, affordable at this scale; decoupled weight decay on the masked entries only (the paper's
rule; the repository's line does not take effect and its scripts use 0); an update interval of
100 steps (the repository uses 10 to 400 by model) and rank 16, the LoRA default here, so that
`--method lift` and `--method lora` train the same number of parameters. The result is a sparse
delta (methods/sparse_delta.py), the changed entries only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from imprint.methods.base import register
from imprint.methods.lm_base import LMMethod
from imprint.methods.sparse_delta import apply_sparse_delta, delta_size, save_sparse_delta, sparse_delta
from imprint.util.settings import setting

log = logging.getLogger("imprint")

DELTA_FILE = "sparse_delta.safetensors"


@dataclass
class LIFTSettings:
    lift_rank: int = setting(16, "the parameter budget: each matrix trains (m + n) x rank entries, as a LoRA "
                             "of this rank would", positive=True)
    lift_filter_rank: int = setting(32, "rank of the approximation of W whose largest entries are chosen",
                                    positive=True)
    lift_update_interval: int = setting(100, "recompute the masks from the current weights every N steps "
                                        "(0: never)", non_negative=True)


def principal_mask(weight: torch.Tensor, filter_rank: int, k: int) -> torch.Tensor:
    """Flat indices (sorted) of the k largest |W'|, W' the rank-`filter_rank` SVD approximation of W."""
    w = weight.detach().float()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = min(filter_rank, s.numel())
    approximation = (u[:, :r] * s[:r]) @ vh[:r]
    return approximation.abs().flatten().topk(k).indices.sort().values


class SparseMaskedAdam(torch.optim.Optimizer):
    """Adam(W) that updates only the masked entries of each parameter and keeps its moments for
    them alone: state = {indices (k,), exp_avg (k,), exp_avg_sq (k,), step}."""

    def __init__(self, params, masks: list[torch.Tensor], lr: float, betas=(0.9, 0.95), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        for p, mask in zip(self.param_groups[0]["params"], masks):
            self.state[p] = {"indices": mask.to(p.device), "exp_avg": torch.zeros(mask.numel(), device=p.device),
                             "exp_avg_sq": torch.zeros(mask.numel(), device=p.device),
                             "step": torch.tensor(0.0)}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                idx = state["indices"]
                flat = p.data.view(-1)
                g = p.grad.reshape(-1)[idx].float()
                state["step"] += 1
                t = float(state["step"])
                state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                step_size = group["lr"] / (1 - beta1 ** t)
                denominator = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt().add_(group["eps"])
                values = flat[idx].float()
                if group["weight_decay"]:
                    values.mul_(1 - group["lr"] * group["weight_decay"])
                values.addcdiv_(state["exp_avg"], denominator, value=-step_size)
                flat[idx] = values.to(flat.dtype)
        return None

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts every floating parameter's state to the parameter's dtype: the indices back
        # to integers, the moments to float32
        super().load_state_dict(state_dict)
        for state in self.state.values():
            state["indices"] = state["indices"].long()
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = state[key].float()

    @torch.no_grad()
    def set_masks(self, masks: list[torch.Tensor]) -> None:
        """New masks: entries in the old and the new mask keep their moments, new ones start at zero."""
        for p, new in zip(self.param_groups[0]["params"], masks):
            state = self.state[p]
            new = new.to(p.device)
            for key in ("exp_avg", "exp_avg_sq"):
                dense = torch.zeros(p.numel(), device=p.device)
                dense[state["indices"]] = state[key]
                state[key] = dense[new].clone()
            state["indices"] = new


@register
class LIFT(LMMethod):
    name = "lift"
    summary = "the principal weights: top entries of each matrix's low-rank approximation, sparse Adam (LIFT)"
    Settings = LIFTSettings
    default_lr = 2e-4
    trains_base_weights = True

    def prepare(self, lm, seed: int) -> list[torch.nn.Parameter]:
        params = []
        for module in lm.blocks().modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.requires_grad_(True)
                params.append(module.weight)
        self.params = params
        self.base = {n: p.detach().cpu().clone() for n, p in lm.model.named_parameters() if p.requires_grad}
        self.optimizer = None
        return params

    def budget(self, weight: torch.Tensor) -> int:
        m, n = weight.shape
        return min((m + n) * self.settings.lift_rank, m * n)

    def masks(self) -> list[torch.Tensor]:
        return [principal_mask(p, self.settings.lift_filter_rank, self.budget(p)) for p in self.params]

    def make_optimizer(self, params: list[torch.nn.Parameter], settings) -> torch.optim.Optimizer:
        if settings.optimizer != "adamw":
            log.warning("--method lift trains with its own sparse Adam; --optimizer %s is not used", settings.optimizer)
        self.optimizer = SparseMaskedAdam(params, self.masks(), lr=settings.lr, weight_decay=settings.weight_decay)
        return self.optimizer

    def after_optimizer_step(self, lm, step: int) -> None:
        interval = self.settings.lift_update_interval
        if interval and step % interval == 0 and self.optimizer is not None:
            self.optimizer.set_masks(self.masks())

    def trainable_parameter_count(self, lm) -> int:
        return sum(self.budget(p) for p in self.params)

    def save_result(self, lm, folder: Path) -> list[str]:
        tuned = {n: p for n, p in lm.model.named_parameters() if n in self.base}
        delta = sparse_delta(tuned, self.base)
        save_sparse_delta(delta, Path(folder) / DELTA_FILE, {"base_model": lm.name})
        log.info("LIFT changed %d entries (%.3f%% of the trained matrices)", delta_size(delta),
                 100 * delta_size(delta) / max(1, sum(p.numel() for p in self.params)))
        return [DELTA_FILE]

    @classmethod
    def apply_result(cls, lm, folder: Path, metadata: dict) -> None:
        apply_sparse_delta(lm.model, cls.result_path(folder, DELTA_FILE))

