"""HiFi Tuner's subject substitution (Wang et al., arXiv 2312.00079, sec. 3.4, Algorithm 3):
`imprint edit` puts the learned subject in place of an object of a real photo, keeping the rest.

Taken from the paper: the photo is DDIM-inverted with its caption c_r (guidance 1); null-text
inversion (Mokady et al. 2023) then fits, step by step from the noisiest, an unconditional
embedding phi_t (K Adam steps on the distance of the guided DDIM step to the inverted trajectory,
each phi_t started from the previous one) and records the caption's cross-attention maps of that
guided reconstruction; the edit samples from the inverted x_T with the caption whose object word w
is replaced by the subject's (c_g, with HiFi's step-wise vectors c_s^t where the run has them) and
phi_t, its cross-attention maps taken from the reconstruction for every token except the subject's
words and c_s^t, which attend by themselves.
Chosen here: the caption is the user's --source-prompt (the paper captions with BLIP-2, not shipped
here); K = 10 and Adam lr 1e-2 (null-text inversion's); maps are injected at every denoising step
and cross-attention layer, per head, kept in float16; a target token after the swapped words takes
the map of the source token it follows (positions shift by the length difference); the tokens of
c_s^t (the last n positions) keep their own.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from imprint.image.reference_guidance import Sampler, invert

log = logging.getLogger("imprint")


class CrossAttentionMaps:
    """An attention processor for the cross-attention layers that records the guided batch's
    conditional maps (its second half) per step and layer, or writes recorded maps into it."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor

        self.base = AttnProcessor()
        self.maps: dict[tuple[int, str], torch.Tensor] = {}
        self.mode, self.step, self.mapping = None, 0, None

    def processor(self, name: str):
        def call(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
            if self.mode is None:
                return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            scores = attn.get_attention_scores

            def edited(query, key, mask=None):
                probs = scores(query, key, mask)
                cond = probs[probs.shape[0] // 2:]  # [unconditional, conditional] x heads, batch-major
                if self.mode == "record":
                    self.maps[self.step, name] = cond.detach().half()
                else:
                    taken, sources = self.mapping
                    stored = self.maps[self.step, name].to(cond)
                    cond = cond.clone()
                    cond[..., taken] = stored[..., sources]
                    probs = torch.cat([probs[:probs.shape[0] // 2], cond])
                return probs

            attn.get_attention_scores = edited
            try:
                return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            finally:
                del attn.get_attention_scores  # back to the class's method

        return call

    def install(self, unet) -> None:
        processors = {}
        for name, processor in unet.attn_processors.items():
            processors[name] = self.processor(name) if name.endswith("attn2.processor") else processor
        unet.set_attn_processor(processors)

    @contextlib.contextmanager
    def at(self, mode: str, step: int):
        self.mode, self.step = mode, step
        try:
            yield
        finally:
            self.mode = None


def token_mapping(tokenizer, source: str, target: str, word: str, new: str, own_tail: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(target columns that take a source map, their source columns): every target token but the
    new words (and the last `own_tail` positions) maps to the source token at its place, shifted by
    the length difference after the swapped words."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    length = tokenizer.model_max_length
    src, word_ids, new_ids = ids(source), ids(word), ids(new)
    start = next((i for i in range(len(src) - len(word_ids) + 1) if src[i:i + len(word_ids)] == word_ids), None)
    if start is None:
        raise ValueError(f"{word!r} is not a word of {source!r}")
    start += 1  # the start token
    shift = len(new_ids) - len(word_ids)
    taken, sources = [], []
    for j in range(length - own_tail):
        if start <= j < start + len(new_ids):
            continue  # the subject's words attend by themselves
        i = j if j < start else j - shift
        if 0 <= i < length:
            taken.append(j)
            sources.append(i)
    return torch.tensor(taken), torch.tensor(sources)


def null_text_inversion(sampler: Sampler, inverted: dict[int, torch.Tensor], x0: torch.Tensor, c_r: torch.Tensor,
                        maps: CrossAttentionMaps, null_steps: int = 10, lr: float = 1e-2) -> list[torch.Tensor]:
    """phi_t per step such that the guided DDIM steps with c_r retrace the inverted trajectory;
    the conditional cross-attention maps of that retrace are recorded in `maps`."""
    timesteps = sampler.scheduler.timesteps.tolist()
    x, null, nulls = inverted[timesteps[0]], sampler.negative.detach().clone(), []
    for i, t in enumerate(tqdm(timesteps, desc="null-text inversion", unit="step", disable=None)):
        target = inverted[timesteps[i + 1]] if i + 1 < len(timesteps) else x0
        null = null.detach().requires_grad_(True)
        optimizer = torch.optim.Adam([null], lr=lr)
        for _ in range(null_steps):
            loss = F.mse_loss(sampler.step(x, t, null, positive=c_r), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad(), maps.at("record", i):
            x = sampler.step(x, t, null, positive=c_r)
        nulls.append(null.detach())
    return nulls


def substitute(pipe, image: Image.Image, source_prompt: str, word: str, subject_words: str, target_prompt: str,
               resolution: int, steps: int = 50, guidance: float = 7.5, null_steps: int = 10,
               own_tail: int = 0) -> Image.Image:
    """The photo with `word` of its caption `source_prompt` replaced by the run's subject."""
    pipe.unet.requires_grad_(False)
    sampler = Sampler(pipe, target_prompt, "", steps, guidance)
    with torch.no_grad():
        c_r, _ = pipe.encode_prompt(source_prompt, sampler.device, 1, False)
    photo = image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
    x0 = sampler.encode(pipe.image_processor.preprocess(photo, resolution, resolution))
    with torch.no_grad():
        inverted = invert(lambda x, t: pipe.unet(x, t, encoder_hidden_states=c_r).sample, sampler.scheduler, x0)
    maps = CrossAttentionMaps()
    maps.install(pipe.unet)
    nulls = null_text_inversion(sampler, inverted, x0, c_r, maps, null_steps)
    maps.mapping = token_mapping(pipe.tokenizer, source_prompt, target_prompt, word, subject_words, own_tail)
    timesteps = sampler.scheduler.timesteps.tolist()
    x = inverted[timesteps[0]]
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            with maps.at("inject", i):
                x = sampler.step(x, t, nulls[i])
    return sampler.decode(x)
