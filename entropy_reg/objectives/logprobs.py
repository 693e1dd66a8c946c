"""Per-token log-probabilities of a batch through a causal LM, without [tokens, vocab] logits when possible."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from entropy_reg.models.forward import hidden_path_blocker

# Target size of one [rows, V] logits chunk (same budget as the loss kernel's).
_CHUNK_BYTES = 64 * 2**20


def _chunk_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    logits = F.linear(hidden, weight, bias).to(dtype)
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    hidden_path: bool = True,
    positions: Tensor | None = None,
) -> Tensor:
    """``log p(x_t | x_<t)`` for t = 1..T-1, with grad.

    Args:
        model: a Hugging Face causal LM (train or eval mode as the caller left it).
        input_ids: ``[B, T]``.
        attention_mask: ``[B, T]`` or None.
        hidden_path: use the decoder's hidden states and the LM head per chunk of rows (each chunk's
            logits recomputed in backward instead of stored), when the model allows it.
        positions: ``[B, T-1]`` bool, the entries the caller reads; on the hidden path the LM head
            runs on those rows only. Other entries are 0 (no grad). None: all.

    Returns:
        ``[B, T-1]`` float32 (float64 for a float64 model) log-probabilities.
    """
    targets = input_ids[:, 1:]
    if hidden_path and hidden_path_blocker(model) is None:
        out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state[:, :-1]
        head = model.get_output_embeddings()
        B, T1, H = hidden.shape
        flat_hidden, flat_targets = hidden.reshape(B * T1, H), targets.reshape(B * T1)
        index = None if positions is None else positions.reshape(-1).nonzero().squeeze(1)
        if index is not None:
            flat_hidden, flat_targets = flat_hidden.index_select(0, index), flat_targets.index_select(0, index)
        rows = max(1, _CHUNK_BYTES // (4 * head.weight.shape[0]))
        pieces = []
        for start in range(0, flat_hidden.shape[0], rows):
            args = (flat_hidden[start : start + rows], head.weight, head.bias, flat_targets[start : start + rows])
            # Recompute the chunk's logits in backward: memory stays one chunk, not [tokens, vocab].
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False) if torch.is_grad_enabled()
                          else _chunk_logprobs(*args))
        values = torch.cat(pieces) if pieces else flat_hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))
        if index is None:
            return values.reshape(B, T1)
        return values.new_zeros(B * T1).index_copy(0, index, values).reshape(B, T1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logp = logits.gather(2, targets[..., None]).squeeze(2) - torch.logsumexp(logits, dim=-1)
    return logp if positions is None else torch.where(positions, logp, torch.zeros_like(logp))
