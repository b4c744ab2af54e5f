"""A FLUX attention processor whose attention step is a function, for the generation-time methods
that change it (FreeCus, Diptych prompting). The projections, norms, rotary embedding and output
projections are diffusers' `FluxAttnProcessor`'s, step for step; only `attend` differs.

Token order is diffusers': in the double-stream blocks the text tokens come first, then the
image's; the single-stream blocks get them already joined in that order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flux_attention_modules(transformer) -> list[tuple[str, torch.nn.Module]]:
    """The transformer's attention modules in block order: the double-stream blocks', then the
    single-stream blocks' (the order the papers number FLUX's 57 layers in)."""
    return [(name, module) for name, module in transformer.named_modules()
            if name.endswith(".attn") and hasattr(module, "processor")]


def plain_attention(query, key, value, text_tokens: int) -> torch.Tensor:
    """(B, S, H, D) in, (B, S, H, D) out: softmax(q k^T / sqrt(d)) v."""
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


class FluxProcessor:
    """diffusers' FluxAttnProcessor with `attend(query, key, value, text_tokens)` in place of its
    attention call (query, key, value: (B, S, H, D), after the norms and the rotary embedding)."""

    def __init__(self, attend, text_tokens):
        self.attend = attend
        self.text_tokens = text_tokens  # () -> the text length, for single blocks (their input is joined)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query, encoder_key, encoder_value = (x.unflatten(-1, (-1, attn.head_dim))
                                                         for x in (encoder_query, encoder_key, encoder_value))
            encoder_query, encoder_key = attn.norm_added_q(encoder_query), attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else self.text_tokens()
        hidden_states = self.attend(query, key, value, text).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())
