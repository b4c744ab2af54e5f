"""TuCo, the tuning contribution (Nuti et al., "How Much Do Fine-Tuned Models Depend on Pre-Training?",
ICML 2025, arXiv 2506.23423): how much of a fine-tuned model's answer comes from the fine-tuning.

Taken from the paper (its section 3, Algorithm 1 and Definition 4.3): a block l maps the residual
stream x_l to x_{l+1} = x_l + f_FT(x_l, l), f the whole block (attention and MLP). On the fine-tuned
model's own hidden states, the pre-trained component is PTC_l = f_PT(x_l, l), the pre-trained
block's update of the same x_l, and the fine-tuning component FTC_l = f_FT(x_l, l) - PTC_l, so
x_L = x_0 + sum PTC + sum FTC exactly. At the prompt's last token,
    TuCo = |sum_l FTC_l|_1 / (|sum_l PTC_l|_1 + |sum_l FTC_l|_1),
the L1 norm, the embedding and the final norm outside both sums. TuCo is 0 for the base model
itself.

Chosen here: a prompt is a user message rendered with the chat template's generation prompt (its
last token is where the answer starts); the authors' code was not reachable, so the hooks below
(the fine-tuned block's own inputs fed to the pre-trained block) are imprint's.
"""

from __future__ import annotations

import torch

from imprint.lm.data import render, with_system


def block_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def tuning_contribution(base_lm, tuned_lm, text: str) -> dict:
    """TuCo of one rendered prompt, with the sums it comes from (and the decomposition's error)."""
    ids = tuned_lm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(tuned_lm.device)
    base_blocks = base_lm.blocks()
    sums = {"ptc": 0.0, "ftc": 0.0}
    captured = {}

    def hook(index):
        def run(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            pretrained = block_output(base_blocks[index](x, *args[1:], **rest)) - x
            tuned = block_output(output) - x
            sums["ptc"] = sums["ptc"] + pretrained[0, -1].double()
            sums["ftc"] = sums["ftc"] + (tuned - pretrained)[0, -1].double()
            if index == 0:
                captured["first"] = x[0, -1].double()
            captured["last"] = block_output(output)[0, -1].double()
        return run

    handles = [block.register_forward_hook(hook(i), with_kwargs=True) for i, block in enumerate(tuned_lm.blocks())]
    try:
        tuned_lm.model.eval()
        base_lm.model.eval()
        tuned_lm.model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    ptc, ftc = sums["ptc"].abs().sum().item(), sums["ftc"].abs().sum().item()
    residual = (captured["first"] + sums["ptc"] + sums["ftc"] - captured["last"]).abs().max().item()
    return {"tuco": ftc / (ptc + ftc) if ptc + ftc > 0 else 0.0, "ptc_l1": ptc, "ftc_l1": ftc,
            "decomposition_error": residual}


def prompt_texts(tokenizer, prompts: list[str], system_prompt: str | None = None) -> list[str]:
    return [render(tokenizer, with_system([{"role": "user", "content": p}], system_prompt), generation_prompt=True)
            for p in prompts]


def tuco_by_set(base_lm, tuned_lm, prompt_sets: dict[str, list[str]], system_prompt: str | None = None) -> dict:
    """Per prompt set (task, control): the mean TuCo and each prompt's."""
    out = {}
    for name, prompts in prompt_sets.items():
        values = [tuning_contribution(base_lm, tuned_lm, t)["tuco"]
                  for t in prompt_texts(tuned_lm.tokenizer, prompts, system_prompt)]
        out[name] = {"mean": sum(values) / max(len(values), 1), "per_prompt": dict(zip(prompts, values))}
    return out
