"""Contrastive generation (Isonuma & Titov, "What's New in My Data? Novelty Exploration via Contrastive
Generation", ICLR 2025, arXiv 2410.14765): text the fine-tuned model finds far likelier than the
pre-trained one, which shows what the fine-tuning data taught without looking at the data.

Taken from the paper and the authors' code (misonuma/cge: model_distill.py, trainer_contrast.py,
run_*.sh): at each step the score of a token is log p_FT - gamma * log p_PT over the tokens the
fine-tuned model finds plausible (p_FT >= alpha * max p_FT; the others are excluded), alpha 0.1,
gamma 1; the next token is sampled from the softmax of the scores; generation starts from the
beginning-of-sequence token alone. The iterative version updates the pre-trained side on each
generated text (one AdamW step of its negative log-likelihood, full weights, the authors' HF default
lr 5e-5 and 100 iterations), so what was already generated stops standing out and the next text
explores something else.

Chosen here: plain sampling of one sequence (the authors sample with 4 beams); a text ends at the
end-of-turn token or after --length tokens (the authors always run the full 256); a chat prompt
may be given instead of the bare start token (a chat model fine-tuned on answers is asked for one);
the update's loss covers the generated tokens only.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F


def contrastive_scores(ft_log_probs: torch.Tensor, pt_log_probs: torch.Tensor, alpha: float = 0.1,
                       gamma: float = 1.0) -> torch.Tensor:
    """log p_FT - gamma * log p_PT where p_FT >= alpha * max p_FT, -inf elsewhere."""
    plausible = ft_log_probs >= ft_log_probs.max(dim=-1, keepdim=True).values + math.log(alpha)
    return (ft_log_probs - gamma * pt_log_probs).masked_fill(~plausible, float("-inf"))


@torch.no_grad()
def contrastive_sample(ft_model, pt_model, prefix: torch.Tensor, length: int, stops: set[int],
                       generator: torch.Generator, alpha: float = 0.1, gamma: float = 1.0) -> tuple[list[int], float]:
    """One text sampled from the contrast: its token ids (after the prefix) and the mean score of
    the tokens drawn (how much likelier the fine-tuned model finds them, in nats)."""
    ft_cache = pt_cache = None
    ids, scores, step_input = [], [], prefix
    for _ in range(length):
        ft_out = ft_model(input_ids=step_input, past_key_values=ft_cache, use_cache=True)
        pt_out = pt_model(input_ids=step_input, past_key_values=pt_cache, use_cache=True)
        ft_cache, pt_cache = ft_out.past_key_values, pt_out.past_key_values
        score = contrastive_scores(F.log_softmax(ft_out.logits[0, -1].float(), -1),
                                   F.log_softmax(pt_out.logits[0, -1].float(), -1), alpha, gamma)
        token = int(torch.multinomial(torch.softmax(score, -1).cpu(), 1, generator=generator))
        ids.append(token)
        scores.append(float(score[token]))
        if token in stops:
            break
        step_input = torch.tensor([[token]], device=prefix.device)
    return ids, sum(scores) / max(len(scores), 1)


def contrastive_generation(ft_lm, pt_lm, samples: int = 10, length: int = 64, iterative: bool = True,
                           lr: float = 5e-5, alpha: float = 0.1, gamma: float = 1.0, prompt: str | None = None,
                           seed: int = 0) -> list[dict]:
    """`samples` texts from the contrast of the fine-tuned model with the pre-trained one; with
    `iterative`, a copy of the pre-trained model takes one step on each text before the next."""
    from imprint.lm.data import render

    tokenizer = ft_lm.tokenizer
    if prompt is None:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        prefix = torch.tensor([[start]], device=ft_lm.device)
    else:
        text = render(tokenizer, [{"role": "user", "content": prompt}], generation_prompt=True)
        prefix = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(ft_lm.device)
    configured = getattr(ft_lm.model.generation_config, "eos_token_id", None)
    stops = {tokenizer.eos_token_id} | set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    pt_model = copy.deepcopy(pt_lm.model) if iterative else pt_lm.model
    optimizer = None
    if iterative:
        for p in pt_model.parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(pt_model.parameters(), lr=lr)
    ft_lm.model.eval()
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(samples):
        pt_model.eval()
        ids, score = contrastive_sample(ft_lm.model, pt_model, prefix, length, stops, generator, alpha, gamma)
        texts.append({"text": tokenizer.decode(ids, skip_special_tokens=True), "mean_score": score,
                      "tokens": len(ids)})
        if iterative:  # the pre-trained side learns the text, so the next one explores elsewhere
            pt_model.train()
            sequence = torch.cat([prefix, torch.tensor([ids], device=prefix.device)], dim=1)
            labels = sequence.clone()
            labels[:, :prefix.shape[1]] = -100
            loss = pt_model(input_ids=sequence, labels=labels, use_cache=False).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return texts
