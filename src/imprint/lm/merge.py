"""Merging language-model runs of one base: task arithmetic, TIES, and the plain sum of
composable sparse fine-tuning, with LiNeS on the merged vector.

Taken from the LiNeS paper and code (arXiv 2410.17146; wang-kee/LiNeS, src/eval/aggregation.py,
ties_utils.py): task arithmetic merges tau = sum_t tau_t; TIES (Yadav et al. 2023) trims each task
vector to its top 20% entries by magnitude (over the whole flattened vector), elects each entry's
sign as the sign of the sum of the trimmed vectors (an entry whose sum is 0 takes the sign of the
untrimmed sum) and averages the trimmed entries that agree with it; LiNeS then scales the merged
vector per block by alpha + beta * l / (L - 1) with alpha = (||sum_t tau_t||_1 / ||tau_merged||_1) / T
and beta chosen on held-out data (grid 0.1..1.0 for task arithmetic, 0.1..1.5 for TIES), by the
mean over tasks of the target accuracy normalised by each run's own. `compose` (Ansell et al.
2022) is the sum with every scale 1: theta_0 + phi_1 + phi_2, exact for sparse deltas.
Chosen: a merge is a small run folder that names its sources; applying it applies each source to
the base, so it merges runs of any method (LoRA, full, LIFT, ...).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import imprint
from imprint.lm.lines import layer_scale, snapshot
from imprint.util.errors import ImprintError
from imprint.util.files import write_json_atomic

log = logging.getLogger("imprint")

HOWS = ("task_arithmetic", "ties", "sum")
BETAS = {"task_arithmetic": tuple(round(0.1 * i, 1) for i in range(1, 11)),
         "ties": tuple(round(0.1 * i, 1) for i in range(1, 16))}


def task_vectors(lm, sources: list[Path]) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """(theta_0, [tau_t]): each source applied to the base in turn."""
    from imprint.lm.generate import apply_run, read_lm_metadata

    base = snapshot(lm)
    tuned = []
    for source in sources:
        apply_run(lm, source, read_lm_metadata(source))
        tuned.append(snapshot(lm))
        restore(lm, base)
    # a parameter a run added (LoFiT's o_proj bias) is zero in the base and in the runs without it
    names = [n for n, _ in lm.model.named_parameters()]
    params = dict(lm.model.named_parameters())
    base = {n: base[n] if n in base else torch.zeros_like(params[n]) for n in names}
    return base, [{n: (t[n] if n in t else base[n]) - base[n] for n in names} for t in tuned]


@torch.no_grad()
def restore(lm, state: dict[str, torch.Tensor]) -> None:
    for name, p in lm.model.named_parameters():
        p.copy_(state[name] if name in state else torch.zeros_like(p))


def flat(vector: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for v in vector.values()])


def unflat(values: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, v in like.items():
        out[name] = values[start:start + v.numel()].view_as(v)
        start += v.numel()
    return out


def ties_merge(vectors: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES on flat task vectors: trim to the top `density` share by magnitude, elect signs, disjoint mean."""
    trimmed = []
    for v in vectors:
        k = max(1, round(density * v.numel()))
        threshold = v.abs().kthvalue(v.numel() - k + 1).values
        trimmed.append(torch.where(v.abs() >= threshold, v, torch.zeros_like(v)))
    stacked = torch.stack(trimmed)
    sign = torch.sign(stacked.sum(0))
    sign = torch.where(sign == 0, torch.sign(torch.stack(vectors).sum(0)), sign)
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


def merged_vector(vectors: list[dict[str, torch.Tensor]], how: str, density: float = 0.2) -> dict[str, torch.Tensor]:
    flats = [flat(v) for v in vectors]
    if how in ("task_arithmetic", "sum"):
        return unflat(torch.stack(flats).sum(0), vectors[0])
    return unflat(ties_merge(flats, density), vectors[0])


def merge_alpha(vectors: list[dict[str, torch.Tensor]], merged: dict[str, torch.Tensor]) -> float:
    """LiNeS's alpha for merging: (||sum_t tau_t||_1 / ||tau_merged||_1) / T."""
    total = torch.stack([flat(v) for v in vectors]).sum(0).abs().sum()
    return float(total / flat(merged).abs().sum().clamp(min=1e-12)) / len(vectors)


@torch.no_grad()
def set_merged(lm, base: dict[str, torch.Tensor], merged: dict[str, torch.Tensor], alpha: float, beta: float) -> None:
    for name, p in lm.model.named_parameters():
        p.copy_(base[name] + layer_scale(lm.layer_of(name), lm.num_layers, alpha, beta) * merged[name])


def apply(lm, folder: Path, metadata: dict) -> None:
    base, vectors = task_vectors(lm, [Path(s) for s in metadata["sources"]])
    merged = merged_vector(vectors, metadata["how"], metadata.get("density", 0.2))
    set_merged(lm, base, merged, metadata["alpha"], metadata["beta"])


def merge(runs: list[str | Path], output: str | Path, how: str = "ties", density: float = 0.2,
          beta: float | None = None, max_new_tokens: int = 64) -> Path:
    """Merge runs into a run folder; beta None: chosen on the runs' held-out examples."""
    from imprint.core.run_folder import RunFolder
    from imprint.lm.evaluate import target_accuracy, target_records
    from imprint.lm.generate import load_base, read_lm_metadata

    if how not in HOWS:
        raise ImprintError(f"--how {how}: choose one of {', '.join(HOWS)}")
    if len(runs) < 2:
        raise ImprintError("merge needs two runs or more")
    if not 0 < density <= 1:
        raise ImprintError(f"--density {density:g}: must be within (0, 1]")
    sources = [Path(r).resolve() for r in runs]
    metadata = [read_lm_metadata(s) for s in sources]
    bases = {(m["base_model"], m["base_model_fingerprint"]) for m in metadata}
    if len(bases) > 1:
        raise ImprintError(f"the runs have different base models ({', '.join(sorted(b for b, _ in bases))}); "
                           "merge runs of one base")
    out = RunFolder(output)
    out.check_new_output()
    lm = load_base(sources[0], metadata[0])
    base, vectors = task_vectors(lm, sources)
    merged = merged_vector(vectors, how, density)
    alpha = 1.0 if how == "sum" else merge_alpha(vectors, merged)
    sweep = []
    if how == "sum":
        beta = 0.0
    elif beta is None:
        targets = [target_records(s, None) for s in sources]
        own = []
        for t, records in zip(vectors, targets):  # each run's own target accuracy, the normaliser
            set_merged(lm, base, t, 1.0, 0.0)
            own.append(target_accuracy(lm, records, max_new_tokens))
        for b in BETAS[how]:
            set_merged(lm, base, merged, alpha, b)
            accuracies = [target_accuracy(lm, records, max_new_tokens) for records in targets]
            normalised = sum(a / o if o > 0 else 0.0 for a, o in zip(accuracies, own)) / len(own)
            sweep.append({"beta": b, "accuracies": accuracies, "normalised": normalised})
            log.info("merge %s beta %.1f: normalised accuracy %.3f", how, b, normalised)
        beta = max(sweep, key=lambda e: e["normalised"])["beta"]
    out.create()
    write_json_atomic(out.path / "merge.json", {"how": how, "alpha": alpha, "beta": beta, "density": density,
                                                 "sources": [str(s) for s in sources], "sweep": sweep})
    out.write_metadata({"imprint_version": imprint.__version__, "task": "lm", **lm.describe(),
                        "base_model": metadata[0]["base_model"], "method": "merge", "how": how,
                        "sources": [str(s) for s in sources], "alpha": alpha, "beta": beta, "density": density,
                        "hyperparameters": metadata[0].get("hyperparameters", {})})
    log.info("%s of %d runs (alpha %.3f, beta %.2f): %s", how, len(sources), alpha, beta, out.path)
    return out.path
