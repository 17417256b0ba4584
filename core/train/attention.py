"""Attention for padding-free batches on any device: causal SDPA run per packed example.

A padding-free batch is one row holding several examples. Plain SDPA handles it with a block-diagonal mask over the
whole row, which costs O(T²) for T = the sum of the lengths and forces the masked kernel. Running causal SDPA on
each example's slice costs O(Σ lᵢ²) and takes the fast ``is_causal`` path — on the alpaca sample about a quarter of
the attention work. The boundaries come from the collator (``cu_seq_lens_q``, as flash-attention's varlen kernels
use). Without them (eval with padding, generation) it is exactly SDPA, mask included.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ATTN_IMPLEMENTATION = "fts_packed_sdpa"
_registered = False


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                          **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    bounds = cu.tolist() if torch.is_tensor(cu) else list(cu)
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    outs = [
        F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=p,
                                       is_causal=True, scale=scaling, enable_gqa=gqa)
        for s, e in zip(bounds[:-1], bounds[1:]) if e > s
    ]
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``attn_implementation="fts_packed_sdpa"`` available to transformers models; returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(ATTN_IMPLEMENTATION, packed_sdpa_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)
        _registered = True
    return ATTN_IMPLEMENTATION
