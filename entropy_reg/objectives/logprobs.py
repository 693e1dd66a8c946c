"""Per-token log-probabilities of a batch through a causal LM, without [tokens, vocab] logits when possible."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from entropy_reg.models.forward import hidden_path_blocker

# Target size of one [rows, V] logits chunk (same budget as the loss kernel's).
_CHUNK_BYTES = 64 * 2**20


def _logprob_of_target(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def _head_chunk(fn: RowFunction, hidden: Tensor, weight: Tensor, bias: Tensor | None, *rows: Tensor) -> Tensor:
    logits = F.linear(hidden, weight, bias).to(torch.promote_types(hidden.dtype, torch.float32))
    return fn(logits, *rows)


RowFunction = Callable[..., Tensor]
"""``fn(logits [R, V] float32, *row_inputs [R, ...]) -> [R, ...]``: what is kept of each row's logits."""


def per_position(
    model: nn.Module,
    input_ids: Tensor,
    positions: Tensor,
    fn: RowFunction,
    row_inputs: tuple[Tensor, ...] = (),
    attention_mask: Tensor | None = None,
    hidden_path: bool = True,
    selected_inputs: tuple[Tensor, ...] = (),
) -> Tensor:
    """``fn`` of the next-token logits at the selected positions, with grad, one chunk of rows at a time.

    Args:
        model: a Hugging Face causal LM (train or eval mode as the caller left it).
        input_ids: ``[B, T]``.
        positions: ``[B, T-1]`` bool: the rows (logits at t, predicting token t+1) to evaluate.
        fn: see :data:`RowFunction`; it must be a pure function of its inputs (on the hidden path
            each chunk's logits are recomputed in backward instead of stored).
        row_inputs: ``[B, T-1, ...]`` tensors whose selected rows are passed to ``fn`` beside the logits.
        selected_inputs: ``[R, ...]`` tensors already holding one entry per selected row (in
            ``positions.nonzero()`` order), passed to ``fn`` after ``row_inputs``' rows.
        attention_mask: ``[B, T]`` or None.
        hidden_path: run the LM head per chunk of selected rows from the decoder's hidden states,
            when the model allows it: ``[tokens, vocab]`` logits never exist.

    Returns:
        ``[R, ...]``: ``fn``'s values of the selected rows, in ``positions.nonzero()`` order.
    """
    index = positions.reshape(-1).nonzero().squeeze(1)
    rows_in = [r.reshape(-1, *r.shape[2:]).index_select(0, index) for r in row_inputs] + list(selected_inputs)
    if hidden_path and hidden_path_blocker(model) is None:
        out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state[:, :-1]
        flat_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
        head = model.get_output_embeddings()
        step = max(1, _CHUNK_BYTES // (4 * head.weight.shape[0]))
        pieces = []
        for start in range(0, flat_hidden.shape[0], step):
            args = (fn, flat_hidden[start : start + step], head.weight, head.bias,
                    *(r[start : start + step] for r in rows_in))
            # Recompute the chunk's logits in backward: memory stays one chunk, not [tokens, vocab].
            pieces.append(checkpoint(_head_chunk, *args, use_reentrant=False) if torch.is_grad_enabled()
                          else _head_chunk(*args))
        if pieces:
            return torch.cat(pieces)
        return fn(flat_hidden.new_zeros(0, head.weight.shape[0], dtype=torch.promote_types(hidden.dtype, torch.float32)),
                  *rows_in)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    logits = logits.reshape(-1, logits.shape[-1]).index_select(0, index)
    return fn(logits.to(torch.promote_types(logits.dtype, torch.float32)), *rows_in)


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
    if positions is None:
        positions = torch.ones_like(targets, dtype=torch.bool)
    values = per_position(model, input_ids, positions, _logprob_of_target, (targets,), attention_mask, hidden_path)
    index = positions.reshape(-1).nonzero().squeeze(1)
    return values.new_zeros(targets.numel()).index_copy(0, index, values).reshape(targets.shape)
