"""`imprint diagnose RUN`: the diagnostics of one finished run, into RUN/diagnostics.json and the
run's report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from imprint.core.run_folder import RunFolder
from imprint.util.errors import ImprintError
from imprint.util.files import write_json_atomic

log = logging.getLogger("imprint")

DIAGNOSTICS_FILE = "diagnostics.json"
LM_DIAGNOSTICS = ("intruders", "tuco", "contrastive", "conjugate")
IMAGE_DIAGNOSTICS = ("intruders", "class_images")


@torch.no_grad()
def linear_maps(model: torch.nn.Module, inside: str = "") -> dict[str, torch.Tensor]:
    """The weight each linear layer applies (under `inside`, a module path prefix), float32, by module
    path. A layer an adapter wraps (PEFT's or imprint's: a `base_layer` child) is probed, not read:
    its effective weight is f(I) - f(0) over the identity, whatever the adapter's form (LoRA, LoKr,
    KronA, ...); the adapter's own inner layers are not matrices of the model."""
    out, wrapped = {}, []
    for name, module in model.named_modules():
        if not name.startswith(inside) or any(name.startswith(w + ".") for w in wrapped):
            continue
        base = getattr(module, "base_layer", None)
        if isinstance(base, torch.nn.Linear):
            wrapped.append(name)
            was_training = module.training
            module.eval()
            eye = torch.eye(base.in_features, dtype=base.weight.dtype, device=base.weight.device)
            out[name] = (module(eye) - module(torch.zeros_like(eye[:1]))).T.float().cpu()
            module.train(was_training)
        elif isinstance(module, torch.nn.Linear):
            out[name] = module.weight.detach().float().cpu().clone()
    return out


def lm_blocks_prefix(lm) -> str:
    blocks = lm.blocks()
    return next(name for name, module in lm.model.named_modules() if module is blocks) + "."


def diagnose_lm(run: Path, metadata: dict, what: tuple[str, ...], settings: dict) -> dict:
    from imprint.diagnose.intruders import model_intruders
    from imprint.lm.evaluate import target_records
    from imprint.lm.generate import apply_run, load_base, load_run_model

    system_prompt = metadata.get("hyperparameters", {}).get("system_prompt")
    base = load_base(run, metadata)
    tuned, _ = load_run_model(run, device=base.device)
    out: dict = {}
    if "intruders" in what:
        log.info("diagnose: intruder dimensions")
        prefix = lm_blocks_prefix(base)
        out["intruders"] = model_intruders(linear_maps(base.model, prefix), linear_maps(tuned.model, prefix))
    if "tuco" in what:
        from imprint.diagnose.tuco import tuco_by_set
        from imprint.lm.control import control_suite

        log.info("diagnose: tuning contribution")
        n = settings.get("prompts", 20)
        task = [r.prompt_messages[-1]["content"] for r in target_records(Path(metadata.get("source_run", run)), None)]
        out["tuco"] = tuco_by_set(base, tuned, {"task": task[:n], "control": [c["prompt"] for c in control_suite()][:n]},
                                  system_prompt)
    if "contrastive" in what:
        from imprint.diagnose.contrastive import contrastive_generation

        log.info("diagnose: contrastive generation")
        out["contrastive"] = {"settings": {k: settings[k] for k in ("samples", "length", "iterative", "prompt")},
                              "texts": contrastive_generation(tuned, base, settings["samples"], settings["length"],
                                                              settings["iterative"], prompt=settings["prompt"],
                                                              seed=settings.get("seed", 0))}
    del tuned
    if "conjugate" in what:  # last: it turns the base model into the run
        from imprint.diagnose.conjugate import conjugate_prompting

        log.info("diagnose: conjugate prompting (%s)", settings["transform"])
        out["conjugate"] = conjugate_prompting(base, lambda lm: apply_run(lm, run, metadata), settings["transform"],
                                               settings["max_new_tokens"], system_prompt)
    return out


def diagnose_image(run: Path, metadata: dict, what: tuple[str, ...], settings: dict) -> dict:
    from imprint.diagnose.intruders import model_intruders
    from imprint.image.generate import load_base_pipeline, load_run_pipeline
    from imprint.image.sampling import sample, save_grid

    base_pipe, family = load_base_pipeline(metadata)
    run_pipe, _, _ = load_run_pipeline(run)
    out: dict = {}
    if "intruders" in what:
        log.info("diagnose: intruder dimensions of the denoiser")
        out["intruders"] = model_intruders(linear_maps(getattr(base_pipe, family.denoiser_name)),
                                           linear_maps(getattr(run_pipe, family.denoiser_name)))
    if "class_images" in what:
        hyper = metadata.get("hyperparameters", {})
        prompt = hyper.get("class_prompt", "a photo of {class_name}").replace("{class_name}", hyper.get("class_name", ""))
        folder = run / "diagnostics"
        folder.mkdir(exist_ok=True)
        resolution = hyper.get("resolution") or 512
        images = {}
        for name, pipe in (("base", base_pipe), ("run", run_pipe)):
            grid = sample(pipe, [prompt], resolution, settings.get("seed", 0), settings.get("inference_steps", 25),
                          images_per_prompt=settings.get("images", 4))
            images[name] = str(save_grid(grid, folder / f"class-{name}.png").relative_to(run))
        out["class_images"] = {"prompt": prompt, "images": images,
                               "note": "the same seeds: what PRES measures, side by side"}
    return out


def diagnose(run: str | Path, what: tuple[str, ...] | None = None, **settings) -> dict:
    """The run's diagnostics (all that apply to its kind, or `what`), written into the run folder."""
    folder = RunFolder(run)
    metadata = folder.read_metadata("RUN")
    is_lm = metadata.get("task") == "lm"
    kinds = LM_DIAGNOSTICS if is_lm else IMAGE_DIAGNOSTICS
    what = tuple(what or kinds)
    unknown = [w for w in what if w not in kinds]
    if unknown:
        raise ImprintError(f"--what {unknown[0]}: not a diagnostic of {'language-model' if is_lm else 'image'} runs; "
                           f"choose from {', '.join(kinds)}")
    result = (diagnose_lm if is_lm else diagnose_image)(folder.path, metadata, what, settings)
    path = folder.path / DIAGNOSTICS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    write_json_atomic(path, {**saved, **result})
    rewrite_report(folder.path, is_lm)
    return {**saved, **result}


def rewrite_report(run: Path, is_lm: bool) -> None:
    """The run's report again, now with its diagnostics, where the run has been evaluated."""
    if is_lm and (run / "evaluation.json").is_file():
        from imprint.lm.report import write_report

        write_report([json.loads((run / "evaluation.json").read_text())], run / "report.html")
    elif not is_lm and (run / "eval" / "metrics.json").is_file():
        from imprint.evaluate.report import write_report

        write_report(json.loads((run / "eval" / "metrics.json").read_text()), run / "eval" / "report.html")
