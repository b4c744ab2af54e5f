"""Transformed LoRA (Tao et al., ICCV 2025, arXiv 2501.08727): W' = W0 T + D on the UNet's
attention projections, a learnable full-rank transform T of the input side and a residual D,
both tensor decomposed.

Taken from the paper (its method section, read through two write-ups; the paper body and the
authors' code, github.com/taozerui/tlora_diffusion, could not be read here):
- the form y = (W0 T + D) x, T of d_in x d_in on the right of W0;
- T a tensor-ring matrix: T[i, j] = tr(A1[i1, j1] ... AK[iK, jK]), cores Ak of I_k x I_k x R x R,
  initialised to the identity by Ak[:, :, r, r'] = I / R (the paper's Proposition 1);
- D a tensor ring over the output and the input modes: D[i, j] = tr(B1[i1] ... BK[iK] C1[j1] ... CK[jK]),
  cores of I_k x R x R, B1 = 0 (so D = 0 at step 0) and the others N(0, s^2) with the paper's
  muP-style s = sqrt(R) / (I_k R); no alpha (the paper has none).
Chosen here (not stated in what could be read): the layers (to_q, to_k, to_v, to_out.0, as the
DCO code the authors built on, and as LoRA), K = 3 cores with the dimension split into near-equal
factors, ranks (2, 6) for (T, D) (the paper's smallest labelled setting reads "TLoRA(2,6)"),
row-major index order (the paper's is little-endian: a relabelling of the same cores).
Computation: the ring of B cores contracts to P (d_out x R^2) and the C cores to Q (d_in x R^2),
so D = P Q^T is a rank-R^2 matrix and D x = P (Q^T x) is never formed; T is formed (d_in^2 R^2)
and applied to x before the frozen layer. Note: with the paper's initialisation every r, r' slice
of a core starts equal and gets equal gradients, so T stays a Kronecker product of K dense
matrices (the rank-1 ring) during training; we keep the paper's init and report it.
The result is the cores (tlora_weights.safetensors); generate merges W0 T + D; export writes
the merged delta W0 (T - I) + D as `diff` keys or an SVD of chosen rank (`imprint export --diff / --svd-rank`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from imprint.methods.base import register
from imprint.methods.layers import AdapterLinear, LayerAdapterMethod
from imprint.util.settings import setting

log = logging.getLogger("imprint")

WEIGHT_NAME = "tlora_weights.safetensors"


@dataclass
class TLoRASettings:
    tlora_transform_rank: int = setting(2, "ring rank of the transform T's cores", positive=True)
    tlora_residual_rank: int = setting(6, "ring rank of the residual's cores (the residual has rank "
                                       "up to its square)", positive=True)
    tlora_cores: int = setting(3, "cores per side: each width is split into this many near-equal factors",
                               positive=True)


def split_dimension(dimension: int, cores: int) -> list[int]:
    """`dimension` as a product of `cores` factors as equal as can be (largest first; 1s if prime)."""
    factors = []
    rest = dimension
    for k in range(cores, 1, -1):
        target = rest ** (1 / k)
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        best = min(divisors, key=lambda d: (abs(math.log(d) - math.log(target)), d))
        factors.append(best)
        rest //= best
    factors.append(rest)
    return sorted(factors, reverse=True)


def ring_matrix(cores: list[torch.Tensor]) -> torch.Tensor:
    """Tensor-ring matrix: cores of (I_k, J_k, R, R) -> T[i, j] = tr(prod_k cores_k[i_k, j_k]), (prod I, prod J)."""
    m = cores[0]
    for core in cores[1:]:
        i, j, r, _ = m.shape
        ii, jj = core.shape[:2]
        m = torch.einsum("ijab,klbc->ikjlac", m, core).reshape(i * ii, j * jj, r, core.shape[3])
    return torch.diagonal(m, dim1=2, dim2=3).sum(-1)


def ring_chain(cores: list[torch.Tensor]) -> torch.Tensor:
    """Cores of (I_k, R, R) -> their ordered products: (prod I, R, R)."""
    m = cores[0]
    for core in cores[1:]:
        m = torch.einsum("iab,kbc->ikac", m, core).reshape(-1, m.shape[1], core.shape[2])
    return m


class TLoRALinear(AdapterLinear):
    def __init__(self, base: nn.Linear, transform_rank: int, residual_rank: int, cores: int):
        super().__init__(base)
        d_out, d_in = base.out_features, base.in_features
        rt, rd = transform_rank, residual_rank
        self.in_modes, self.out_modes = split_dimension(d_in, cores), split_dimension(d_out, cores)
        # T = identity: every slice of every core I / R (Proposition 1)
        self.transform = nn.ParameterList([
            nn.Parameter(torch.eye(n)[:, :, None, None].expand(n, n, rt, rt) / rt) for n in self.in_modes])
        out_cores = [torch.randn(n, rd, rd) * (math.sqrt(rd) / (n * rd)) for n in self.out_modes]
        out_cores[0].zero_()  # D = 0 at step 0
        self.residual_out = nn.ParameterList([nn.Parameter(c) for c in out_cores])
        self.residual_in = nn.ParameterList([
            nn.Parameter(torch.randn(n, rd, rd) * (math.sqrt(rd) / (n * rd))) for n in self.in_modes])

    def transform_matrix(self) -> torch.Tensor:
        return ring_matrix(list(self.transform))

    def residual_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """D = P Q^T: D[i, j] = tr(P_i Q_j) = sum_ab P_i[a, b] Q_j[b, a]."""
        p = ring_chain(list(self.residual_out))                   # (d_out, R, R)
        q = ring_chain(list(self.residual_in)).transpose(1, 2)    # (d_in, R, R), transposed
        return p.flatten(1), q.flatten(1)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transform_matrix()
        p, q = self.residual_factors()
        xf = x.to(t.dtype)
        transformed = (xf @ t.T).to(x.dtype)  # W0 T x = W0 (T x)
        return self.base_layer(transformed) + ((xf @ q) @ p.T).to(x.dtype)

    def merged_weight(self) -> torch.Tensor:
        p, q = self.residual_factors()
        return self.base_layer.weight.float() @ self.transform_matrix() + p @ q.T


@register
class TLoRA(LayerAdapterMethod):
    name = "tlora"
    summary = "Transformed LoRA: W0 T + D, a tensor-ring transform and residual on the UNet's attention"
    Settings = TLoRASettings
    default_lr = 1e-4
    WEIGHT_NAME = WEIGHT_NAME

    def make_layer(self, linear: nn.Linear, path: str) -> TLoRALinear:
        s = self.settings
        return TLoRALinear(linear, s.tlora_transform_rank, s.tlora_residual_rank, s.tlora_cores)
