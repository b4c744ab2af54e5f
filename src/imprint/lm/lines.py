"""LiNeS (Wang et al., arXiv 2410.17146): post-training layer scaling against forgetting.

Taken from the paper and the authors' code (wang-kee/LiNeS, src/eval/eval.py `LiNeS_scaling`):
the task vector tau = theta_ft - theta_0 is scaled per block l in 0..L-1 by
lambda(l) = alpha + beta * l / (L - 1), parameters outside the blocks (embeddings, head, final
norm) by alpha; the single-task setting is beta = 1 - alpha, so the last block keeps its whole
update and the shallow ones shrink toward the base; alpha is swept over 0.0, 0.1, ..., 1.0 and
the best maximises target_weight * normalised target + normalised control, with target weight 2
(the repository's `tradeoff_target_weight`). Normalised here: target accuracy over the run's
own, control retention (already relative to the base). Chosen: a LiNeS result is a small run
folder that names its source run and (alpha, beta); applying it applies the source and rescales,
so any method's run (LoRA, full, HFT, a merge) gets LiNeS the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

import imprint
from imprint.util.errors import ImprintError
from imprint.util.files import write_json_atomic

log = logging.getLogger("imprint")

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
TARGET_WEIGHT = 2.0


def layer_scale(layer: int | None, num_layers: int, alpha: float, beta: float) -> float:
    """lambda(l) = alpha + beta * l / (L - 1) inside the blocks; alpha outside (layer None)."""
    if layer is None:
        return alpha
    return alpha + beta * layer / max(num_layers - 1, 1)


def snapshot(lm) -> dict[str, torch.Tensor]:
    """The model's parameters (tied ones once), copied."""
    return {name: p.detach().clone() for name, p in lm.model.named_parameters()}


@torch.no_grad()
def rescale(lm, base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float, beta: float) -> None:
    """Set the model's parameters to theta_0 + lambda(l) * (theta_ft - theta_0)."""
    for name, p in lm.model.named_parameters():
        scale = layer_scale(lm.layer_of(name), lm.num_layers, alpha, beta)
        start = base[name] if name in base else torch.zeros_like(p)  # a bias the run added (LoFiT's)
        p.copy_(start + scale * (tuned[name] - start))


def apply(lm, folder: Path, metadata: dict) -> None:
    """A LiNeS result onto the base model `lm`: its source run, then the scaling."""
    from imprint.lm.generate import apply_run, read_lm_metadata

    source = Path(metadata["source_run"])
    base = snapshot(lm)
    apply_run(lm, source, read_lm_metadata(source))
    rescale(lm, base, snapshot(lm), metadata["alpha"], metadata["beta"])


def choose(sweep: list[dict], target_weight: float = TARGET_WEIGHT) -> dict:
    """The sweep entry that maximises target_weight * target / run's target + control retention."""
    full = next(e for e in sweep if e["alpha"] == 1.0 and e["beta"] == 0.0)["target"]

    def score(entry: dict) -> float:
        target = entry["target"] / full if full > 0 else 0.0
        return target_weight * target + (entry["retention"] or 0.0)

    # max keeps the first of equal scores: alphas ascending, as the authors' argmax over their sweep
    return max(sorted(sweep, key=lambda e: e["alpha"]), key=score)


def own_evaluation(source: Path, targets, max_new_tokens: int, system_prompt: str | None) -> dict | None:
    """The run's evaluation.json where it measured these targets at this answer length (alpha 1 is
    the run itself; greedy answers make it the same measurement), else None."""
    from imprint.lm.data import with_system
    from imprint.lm.evaluate import EVALUATION_FILE, targets_key

    path = source / EVALUATION_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    key = targets_key([with_system(r.prompt_messages, system_prompt) for r in targets], [(r.answer, r.match) for r in targets])
    if saved.get("max_new_tokens") != max_new_tokens or saved.get("targets_key") != key:
        return None
    return {k: v for k, v in saved.items() if k not in ("run", "method", "trainable_parameters")}


def lines(run: str | Path, output: str | Path | None = None, alphas: tuple[float, ...] = ALPHAS,
          target_weight: float = TARGET_WEIGHT, data: str | None = None, max_new_tokens: int = 64) -> Path:
    """Sweep alpha (beta = 1 - alpha) on the run's held-out examples and the control suite; write
    the best as a run folder (default RUN-lines) with its evaluation and the sweep."""
    from imprint.core.run_folder import RunFolder
    from imprint.lm.evaluate import evaluate_model, target_records
    from imprint.lm.generate import apply_run, load_base, read_lm_metadata
    from imprint.lm.report import write_report

    source = Path(run).resolve()
    metadata = read_lm_metadata(source)
    if any(not 0 <= a <= 1 for a in alphas) or 1.0 not in alphas:
        raise ImprintError("--alphas: values within [0, 1], including 1.0 (the run itself, which the target is "
                           "normalised by)")
    out = RunFolder(output or f"{source}-lines")
    out.check_new_output()
    targets = target_records(source, data)
    lm = load_base(source, metadata)
    base = snapshot(lm)
    apply_run(lm, source, metadata)
    tuned = snapshot(lm)
    system_prompt = metadata.get("hyperparameters", {}).get("system_prompt")
    sweep, results = [], {}
    own = own_evaluation(source, targets, max_new_tokens, system_prompt)
    for alpha in sorted(alphas, reverse=True):
        beta = round(1.0 - alpha, 10)
        if alpha == 1.0 and own is not None:  # the run itself, already measured on these targets
            result = own
        else:
            rescale(lm, base, tuned, 0.0, 0.0)  # the base: evaluate_model measures it first (cached)
            result = evaluate_model(lm, lambda m: rescale(m, base, tuned, alpha, beta), targets, max_new_tokens,
                                    system_prompt)
        results[alpha] = result
        sweep.append({"alpha": alpha, "beta": beta, "target": result["target"]["accuracy"],
                      "retention": result["control"]["retention"], "kl_drift": result["kl_drift"]})
        retention = sweep[-1]["retention"]
        log.info("LiNeS alpha %.2f beta %.2f: target %.3f, control retention %s, KL drift %.4f", alpha, beta,
                 sweep[-1]["target"], "-" if retention is None else f"{retention:.3f}", result["kl_drift"])
    best = choose(sweep, target_weight)
    out.create()
    write_json_atomic(out.path / "lines.json", {"sweep": sweep, "chosen": best, "target_weight": target_weight})
    out.write_metadata({"imprint_version": imprint.__version__, "task": "lm", **lm.describe(),
                        "base_model": metadata["base_model"], "method": "lines", "source_run": str(source),
                        "alpha": best["alpha"], "beta": best["beta"], "hyperparameters": metadata.get("hyperparameters", {}),
                        "trainable_parameters": metadata.get("trainable_parameters")})
    chosen = {"run": str(out.path), "method": f"lines of {metadata['method']}",
              "trainable_parameters": metadata.get("trainable_parameters"), **results[best["alpha"]]}
    write_json_atomic(out.path / "evaluation.json", chosen)
    write_report([chosen], out.path / "report.html")
    log.info("LiNeS chose alpha %.2f, beta %.2f: %s", best["alpha"], best["beta"], out.path)
    return out.path
