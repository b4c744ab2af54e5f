"""Answers from a finished language-model run (its result applied to its base model), or from a
base model alone; and the one way every kind of run is applied: a method's result, a LiNeS
rescaling of another run."""

from __future__ import annotations

from pathlib import Path

import torch

from imprint.families.causal_lm import EMBEDDED, CausalLM
from imprint.util.errors import ImprintError

DERIVED = {"lines": "imprint.lm.lines", "merge": "imprint.lm.merge"}  # run kinds made from other runs


def read_lm_metadata(run: str | Path, flag: str = "--run") -> dict:
    from imprint.core.run_folder import RunFolder
    from imprint.methods import LM_METHODS

    metadata = RunFolder(run).read_metadata(flag)
    if metadata.get("task") != "lm":
        raise ImprintError(f"{flag} {run}: not a language-model run (made by `imprint lm train`)")
    if metadata["method"] not in LM_METHODS and metadata["method"] not in DERIVED:
        raise ImprintError(f"{flag} {run}: method {metadata['method']!r} is not known to this imprint; upgrade imprint")
    return metadata


def apply_run(lm: CausalLM, run: str | Path, metadata: dict) -> None:
    """Turn the base model `lm` into the run's model (a run that started from another run, --init-from,
    is applied on top of that one)."""
    from imprint.methods import LM_METHODS

    if metadata.get("init_from"):
        apply_run(lm, metadata["init_from"], read_lm_metadata(metadata["init_from"], f"run {run}: its --init-from"))
    if metadata["method"] in DERIVED:  # made from other runs: LiNeS, a merge
        import importlib

        importlib.import_module(DERIVED[metadata["method"]]).apply(lm, Path(run), metadata)
    else:
        LM_METHODS[metadata["method"]].apply_result(lm, Path(run), metadata)


def load_base(run: str | Path, metadata: dict, model: str | None = None, device=None) -> CausalLM:
    """The run's base model (or `model`), float32, on the GPU where there is one; refuses a model
    of another architecture."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = CausalLM.load(model or metadata["base_model"], torch.float32, device)
    if lm.fingerprint != metadata.get("base_model_fingerprint"):
        raise ImprintError(f"--model {model or metadata['base_model']}: not the architecture run {run} was trained on; "
                           "use the run's base model")
    return lm


def load_run_model(run: str | Path, model: str | None = None, device=None) -> tuple[CausalLM, dict]:
    """The run's fine-tuned model (its base, or `model`, with the result applied) and its metadata."""
    metadata = read_lm_metadata(run)
    lm = load_base(run, metadata, model, device)
    apply_run(lm, run, metadata)
    return lm, metadata


def answer_prompts(run: str | None, prompts: list[str], model: str | None = None, max_new_tokens: int = 128) -> list[str]:
    from imprint.lm.evaluate import generate_answers

    if max_new_tokens <= 0:
        raise ImprintError(f"--max-new-tokens must be > 0, got {max_new_tokens}")
    if run:
        lm, metadata = load_run_model(run, model)
        system_prompt = metadata.get("hyperparameters", {}).get("system_prompt")
    else:
        lm, system_prompt = CausalLM.load(model or EMBEDDED), None
    return generate_answers(lm, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens, system_prompt)
