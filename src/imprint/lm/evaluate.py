"""What a language-model run learned and what it forgot, measured against its base model.

- target: the share of held-out examples (the run's validation split, or --data) answered right;
- control retention: of the shipped control prompts the *base* model answers right, the share
  the run still answers right (by kind: facts, arithmetic, format);
- KL drift: the mean over answer tokens of KL(base || run), the next-token distributions of
  both models on the base model's own greedy answers to general prompts; 0 for the base itself.

Answers are greedy, through the chat template. The base model's answers are cached per model,
prompt set and length, so judging ten runs of one base generates its answers once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from imprint.families.causal_lm import CausalLM
from imprint.lm.answers import is_correct
from imprint.lm.data import Record, read_jsonl, render, with_system
from imprint.util.errors import ImprintError
from imprint.util.files import cache_root, write_json_atomic

log = logging.getLogger("imprint")

EVALUATION_FILE = "evaluation.json"
GENERATION_BATCH = 16


@torch.no_grad()
def generate_answers(lm: CausalLM, conversations: list[list[dict]], max_new_tokens: int,
                     system_prompt: str | None = None, temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Greedy (or sampled, at `temperature`) answers, batched with left padding."""
    return generate_answer_tokens(lm, conversations, max_new_tokens, system_prompt, temperature, seed)[0]


@torch.no_grad()
def generate_answer_tokens(lm: CausalLM, conversations: list[list[dict]], max_new_tokens: int,
                           system_prompt: str | None = None, temperature: float = 0.0,
                           seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """Answers as text and as token ids (through the end-of-turn token, where one came): greedy, or
    sampled at `temperature` from a generator seeded by `seed` (the same answers on a rerun)."""
    tokenizer, model = lm.tokenizer, lm.model
    model.eval()
    stops = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                else [model.generation_config.eos_token_id]) | {tokenizer.eos_token_id}
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers, ids = [], []
    try:
        for start in range(0, len(conversations), GENERATION_BATCH):
            texts = [render(tokenizer, with_system(c, system_prompt), generation_prompt=True)
                     for c in conversations[start:start + GENERATION_BATCH]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
            if temperature > 0:
                torch.manual_seed(seed * 1_000_003 + start)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 pad_token_id=tokenizer.pad_token_id, temperature=temperature or None, top_p=None,
                                 top_k=None)
            for row in out[:, batch["input_ids"].shape[1]:].tolist():
                end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
                ids.append(row[:end])
                answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return answers, ids


def cache_key(lm: CausalLM, conversations: list[list[dict]], max_new_tokens: int) -> str:
    text = json.dumps([lm.name, lm.fingerprint, conversations, max_new_tokens], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def base_answers(lm: CausalLM, conversations: list[list[dict]], max_new_tokens: int) -> tuple[list[str], list[list[int]]]:
    """The base model's answers (text, token ids), from the cache where this model answered these
    prompts before."""
    path = cache_root() / "lm_base_answers" / f"{cache_key(lm, conversations, max_new_tokens)}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        return saved["answers"], saved["ids"]
    answers, ids = generate_answer_tokens(lm, conversations, max_new_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"answers": answers, "ids": ids})
    return answers, ids


@torch.no_grad()
def answer_log_probs(lm: CausalLM, conversations: list[list[dict]], answers: list[list[int]]) -> list[torch.Tensor]:
    """Per conversation, the log-softmax of the next-token logits at each position of its answer's
    tokens (T, V): the model's distributions along the given answer."""
    tokenizer, model = lm.tokenizer, lm.model
    out = []
    for conversation, answer_ids in zip(conversations, answers):
        prompt = render(tokenizer, conversation, generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not answer_ids:
            out.append(torch.zeros(0, model.config.vocab_size))
            continue
        ids = torch.tensor([prompt_ids + answer_ids], device=lm.device)
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
        out.append(torch.log_softmax(logits, dim=-1).cpu())
    return out


def kl_drift(base: list[torch.Tensor], tuned: list[torch.Tensor]) -> float:
    """Mean over all answer tokens of KL(base || tuned) = sum_v p_base (log p_base - log p_tuned)."""
    total, tokens = 0.0, 0
    for b, t in zip(base, tuned):
        if b.shape[0]:
            total += float((b.exp() * (b - t)).sum())
            tokens += b.shape[0]
    return total / max(tokens, 1)


def target_records(run: Path, data: str | None) -> list[Record]:
    if data:
        return read_jsonl(data, "--data")
    path = run / "validation.jsonl"
    if not path.is_file():
        raise ImprintError(f"{run}: the run kept no validation split (--validation-share 0); pass --data with "
                           "held-out examples")
    return read_jsonl(path, "validation.jsonl")


def targets_key(conversations: list[list[dict]], items: list[tuple[str, str]]) -> str:
    """What identifies a target set (prompts and how each answer is checked): two evaluations with the
    same key, model and answer length are the same measurement."""
    return hashlib.sha256(json.dumps([conversations, items], sort_keys=True).encode()).hexdigest()[:20]


def score(answers: list[str], items: list[tuple[str, str]]) -> list[bool]:
    return [is_correct(a, answer, match) for a, (answer, match) in zip(answers, items)]


def target_accuracy(lm: CausalLM, targets: list[Record], max_new_tokens: int, system_prompt: str | None = None) -> float:
    """The share of `targets` the model as it is answers right (no base, no control: for sweeps
    that choose on the target alone)."""
    answers = generate_answers(lm, [with_system(r.prompt_messages, system_prompt) for r in targets], max_new_tokens)
    return sum(score(answers, [(r.answer, r.match) for r in targets])) / max(len(targets), 1)


def evaluate_model(lm: CausalLM, apply, targets: list[Record], max_new_tokens: int,
                   system_prompt: str | None = None) -> dict:
    """Evaluate the model `apply(lm)` makes of the base `lm` (None: the base itself) against the base."""
    from imprint.lm.control import GENERAL_PROMPTS, control_suite

    control = control_suite()
    control_conversations = [[{"role": "user", "content": c["prompt"]}] for c in control]
    general = [[{"role": "user", "content": p}] for p in GENERAL_PROMPTS]
    target_conversations = [with_system(r.prompt_messages, system_prompt) for r in targets]

    base_control = base_answers(lm, control_conversations, max_new_tokens)[0]
    base_target = base_answers(lm, target_conversations, max_new_tokens)[0]
    base_general = base_answers(lm, general, max_new_tokens)[1]
    base_log_probs = answer_log_probs(lm, general, base_general)
    if apply is not None:
        apply(lm)
    tuned_control = generate_answers(lm, control_conversations, max_new_tokens)
    tuned_target = generate_answers(lm, target_conversations, max_new_tokens)
    drift = kl_drift(base_log_probs, answer_log_probs(lm, general, base_general))

    target_items = [(r.answer, r.match) for r in targets]
    control_items = [(c["answer"], c["match"]) for c in control]
    base_target_right, tuned_target_right = score(base_target, target_items), score(tuned_target, target_items)
    base_control_right, tuned_control_right = score(base_control, control_items), score(tuned_control, control_items)
    kept = [i for i, right in enumerate(base_control_right) if right]
    by_kind: dict[str, list[int]] = {}
    for i in kept:
        by_kind.setdefault(control[i]["kind"], []).append(i)
    n = max(len(targets), 1)
    return {
        "target": {"examples": len(targets), "accuracy": sum(tuned_target_right) / n,
                   "base_accuracy": sum(base_target_right) / n,
                   "gain": (sum(tuned_target_right) - sum(base_target_right)) / n},
        "control": {"prompts": len(control), "base_right": len(kept),
                    # None where the base gets none right (a model the suite was not built for)
                    "retention": sum(tuned_control_right[i] for i in kept) / len(kept) if kept else None,
                    "retention_by_kind": {k: sum(tuned_control_right[i] for i in v) / len(v)
                                          for k, v in sorted(by_kind.items())}},
        "kl_drift": drift,
        "max_new_tokens": max_new_tokens,
        "targets_key": targets_key(target_conversations, target_items),
        # per item, for paired comparisons of runs on the same items (benchmarks/lm_forgetting.py)
        "target_right": tuned_target_right,
        "control_right": {control[i]["prompt"]: tuned_control_right[i] for i in kept},
        "examples": {
            "target": [{"prompt": t[-1]["content"], "answer": a, "gold": r.answer, "right": ok}
                       for t, a, r, ok in list(zip(target_conversations, tuned_target, targets, tuned_target_right))[:20]],
            "control_lost": [{"prompt": control[i]["prompt"], "base": base_control[i], "run": tuned_control[i]}
                             for i in kept if not tuned_control_right[i]][:20],
        },
    }


def summary_line(result: dict) -> str:
    retention = result["control"]["retention"]
    return (f"target {result['target']['accuracy']:.3f} (base {result['target']['base_accuracy']:.3f})  control "
            f"retention {'-' if retention is None else f'{retention:.3f}'}  KL drift {result['kl_drift']:.4f}")


def evaluate_run(run: str | Path, data: str | None = None, max_new_tokens: int = 64, device=None) -> dict:
    """Evaluate a finished run against its base model; write RUN/evaluation.json and report.html."""
    from imprint.core.run_folder import RunFolder
    from imprint.lm.generate import apply_run, load_base, read_lm_metadata

    folder = RunFolder(run)
    metadata = read_lm_metadata(run)
    if data or "sources" not in metadata:
        targets = target_records(Path(metadata.get("source_run", folder.path)), data)
    else:  # a merge: every source's held-out examples
        targets = [r for source in metadata["sources"] for r in target_records(Path(source), None)]
    lm = load_base(run, metadata, device=device)
    system_prompt = metadata.get("hyperparameters", {}).get("system_prompt")
    result = evaluate_model(lm, lambda base: apply_run(base, folder.path, metadata), targets,
                            max_new_tokens, system_prompt)
    result = {"run": str(folder.path), "method": metadata["method"],
              "trainable_parameters": metadata.get("trainable_parameters"), **result}
    write_json_atomic(folder.path / EVALUATION_FILE, result)
    from imprint.lm.report import write_report

    write_report([result], folder.path / "report.html")
    log.info("%s: %s", summary_line(result), folder.path / EVALUATION_FILE)
    return result
