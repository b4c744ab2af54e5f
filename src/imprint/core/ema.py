"""An exponential moving average of trained tensors (the weights a run ships when on).

The decay warms up as min(decay, (1 + step) / (10 + step)), so early averages are not
dominated by the random start (the schedule of the toy world's pre-training)."""

from __future__ import annotations

import contextlib

import torch


class EMA:
    def __init__(self, tensors: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.live = tensors  # shares storage with the model: updated in place by the optimizer
        self.average = {k: v.detach().clone() for k, v in tensors.items()}
        self._live, self._average = list(tensors.values()), [self.average[k] for k in tensors]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._average, self._live, 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.average.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.average.items():
                v.copy_(state[k].to(v.dtype))

    @contextlib.contextmanager
    def applied(self):
        """The average in the model for a while (samples during training), the live weights back after."""
        saved = [v.detach().clone() for v in self._live]
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for v, s in zip(self._live, saved):
                    v.copy_(s)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for k, v in self.live.items():
            v.copy_(self.average[k])
