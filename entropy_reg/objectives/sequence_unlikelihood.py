"""SequenceUnlikelihood: Welleck et al. (2019) sequence-level unlikelihood on the model's own continuations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entropy_reg.generation.decode import _eos_ids, parse_decoding

from .base import (
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    check_int,
    check_open_unit,
    checked,
    responses,
    stat,
    zero_loss,
)
from .logprobs import token_logprobs


def mark_repeats(tokens: Sequence[int], start: int, ngram: int, eos_ids: Sequence[int] = ()) -> list[bool]:
    """Which positions of ``tokens`` complete an n-gram that already occurred earlier.

    Only continuation positions (``t >= start``) are marked, the n-gram may reach back into the prefix,
    and an earlier occurrence may overlap (``a a a a a`` with n = 2 marks from the third ``a``).
    Positions after the first EOS of the continuation are never marked (the EOS itself may be).

    Args:
        tokens: prefix followed by continuation.
        start: index of the first continuation token.
        ngram: n (>= 1).
        eos_ids: end-of-sequence token ids.

    Returns:
        One bool per position of ``tokens``.
    """
    eos = set(eos_ids)
    stop = len(tokens)
    for t in range(start, len(tokens)):
        if tokens[t] in eos:
            stop = t + 1
            break
    marks = [False] * len(tokens)
    seen: set[tuple[int, ...]] = set()
    for t in range(ngram - 1, stop):
        gram = tuple(tokens[t - ngram + 1 : t + 1])
        if t >= start and gram in seen:
            marks[t] = True
        seen.add(gram)
    return marks


def eos_ids_of(tokenizer: Any | None, model: torch.nn.Module) -> list[int]:
    """End-of-sequence ids: the tokenizer's and the model's ``generation_config``'s."""
    ids = set(_eos_ids(tokenizer, model))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(int(e) for e in (configured if isinstance(configured, list | tuple) else [configured]))
    return sorted(ids)


@torch.no_grad()
def continue_prefixes(model: torch.nn.Module, prefixes: Tensor, max_new_tokens: int, tokenizer: Any | None,
                      generate_kwargs: dict[str, Any], seed: int) -> Tensor:
    """``[N, P + C']``: unpadded prefixes ``[N, P]`` and the model's continuations (eval mode, KV cache,
    no grad, train mode restored; sampling seeded with ``seed`` without touching the global RNG)."""
    eos = eos_ids_of(tokenizer, model)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (eos[0] if eos else 0)
    was_training = model.training
    model.eval()
    devices = [prefixes.device] if prefixes.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return model.generate(
                input_ids=prefixes, attention_mask=torch.ones_like(prefixes), max_new_tokens=max_new_tokens,
                min_new_tokens=0, pad_token_id=pad, eos_token_id=eos or None, use_cache=True, **generate_kwargs,
            )
    finally:
        model.train(was_training)


@dataclass
class ContinuationBatch:
    """Prefixes and the model's continuations, with the positions to penalise.

    Attributes:
        input_ids: ``[N, P + C']`` prefix + continuation (C' <= continuation_length when every row
            ended early); positions after an EOS hold padding.
        marked: ``[N, P + C']`` bool.
        considered: continuation positions up to and including the first EOS (marked_share's denominator).
        examples, skipped: examples looked at, and those whose response is shorter than the prefix.
    """

    input_ids: Tensor
    marked: Tensor
    considered: int
    examples: int
    skipped: int


class SequenceUnlikelihood(Objective):
    """Sequence-level unlikelihood: push probability off the n-gram repeats of the model's own continuations.

    On a ``rate`` share of optimizer steps: take one prefix of ``prefix_length`` tokens per training
    example (the first tokens of the response, where labels say it starts; the whole row without
    labels), generate ``continuation_length`` tokens with the KV cache (no grad, eval mode; train mode
    restored after), mark each continuation position whose token completes an ``ngram``-gram that
    already occurred earlier in prefix + continuation (nothing after an EOS), forward prefix +
    continuation with grad and take the mean over marked positions (of all ranks under DDP) of
    ``-log(max(eps, 1 - p(x_t)))``.

    Examples whose response is shorter than ``prefix_length`` are skipped and counted. A rank (or
    step) with no marked position contributes an exact 0 that reaches every trainable parameter (no
    second forward is run), so DDP never hangs.

    Statistics (``train/seq_ul`` is the loss): ``seq_ul/marked_share`` (share of continuation tokens
    marked: a live measure of how much the model repeats itself), ``seq_ul/p_marked`` (mean probability
    of the marked tokens), ``seq_ul/skipped_share``, ``seq_ul/ran_share``.

    Under parameter sharding (FSDP, DeepSpeed) generation outside the strategy's forward is not
    supported: the entry points fail at the first step with a message saying so.

    Args:
        weight: multiplier of the loss (>= 0).
        rate: share of optimizer steps that run it, in [0, 1].
        prefix_length: tokens of each prefix (>= 1).
        continuation_length: tokens generated per prefix (>= ngram).
        ngram: n of the repeated n-grams (>= 1; Welleck et al.: 4).
        decoding: a decoding preset of :mod:`entropy_reg.generation` (``"greedy"``, ``"top_p"``, ...,
            with overrides like ``"top_p:top_p=0.95"``); sampling is seeded from (seed, step).
        eps: clamp of ``1 - p`` inside the log, in (0, 1).
        seed: seed of the ``rate`` draws and of sampled decodings.
        ignore_index: label value of prompt/padding positions.
    """

    name = "seq_ul"
    stat_keys = ("loss", "marked_share", "p_marked", "skipped_share")
    needs_generation = True
    prefix_length = checked(check_int, 1)
    ngram = checked(check_int, 1)
    continuation_length = checked(check_int, 1)
    eps = checked(check_open_unit)

    def __init__(
        self,
        weight: float = 1.0,
        rate: float = 0.5,
        prefix_length: int = 32,
        continuation_length: int = 64,
        ngram: int = 4,
        decoding: str = "greedy",
        eps: float = 1e-6,
        seed: int = 0,
        ignore_index: int = -100,
    ) -> None:
        super().__init__(weight=weight, rate=rate, seed=seed)
        owner = type(self).__name__
        self.prefix_length = prefix_length
        self.ngram = ngram
        self.continuation_length = continuation_length
        if self.continuation_length < self.ngram:
            raise ValueError(
                f"{owner}: continuation_length ({continuation_length}) must be >= ngram ({ngram}): "
                "a shorter continuation cannot complete an n-gram of its own"
            )
        try:
            self._decoding = parse_decoding(decoding)
        except ValueError as err:
            raise ValueError(f"{owner}: decoding: {err}") from err
        self.decoding = decoding
        self.eps = eps
        self.ignore_index = int(ignore_index)
        self._tokenizer: Any | None = None

    def setup(self, tokenizer: Any | None) -> None:
        # Optional: the EOS ids also come from the model's generation_config.
        self._tokenizer = tokenizer

    def prefixes(self, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """``[N, prefix_length]`` prefixes of the usable examples, and the number skipped."""
        rows, skipped = [], 0
        for ids, start in responses(batch, self.ignore_index):
            if len(ids) - start < self.prefix_length:
                skipped += 1
                continue
            rows.append(ids[start : start + self.prefix_length])
        if not rows:
            return batch["input_ids"].new_empty(0, self.prefix_length), skipped
        return torch.stack(rows), skipped

    def eos_ids(self, model: torch.nn.Module) -> list[int]:
        return eos_ids_of(self._tokenizer, model)

    def continue_prefixes(self, model: torch.nn.Module, prefixes: Tensor, step: int) -> Tensor:
        """``[N, P + C']`` prefixes and their continuations (eval mode, KV cache, no grad)."""
        return continue_prefixes(model, prefixes, self.continuation_length, self._tokenizer,
                                 self._decoding.generate_kwargs(), self.step_seed(step))

    def build(self, model: torch.nn.Module, batch: dict[str, Tensor], step: int) -> ContinuationBatch:
        prefixes, skipped = self.prefixes(batch)
        examples = batch["input_ids"].shape[0]
        if prefixes.shape[0] == 0:
            empty = prefixes.new_empty(0, self.prefix_length)
            return ContinuationBatch(empty, empty.bool(), 0, examples, skipped)
        sequences = self.continue_prefixes(model, prefixes, step)
        eos = self.eos_ids(model)
        marks, considered = [], 0
        for row in sequences.tolist():
            marks.append(mark_repeats(row, self.prefix_length, self.ngram, eos))
            cont = row[self.prefix_length :]
            ends = [i for i, tok in enumerate(cont) if tok in eos]
            considered += ends[0] + 1 if ends else len(cont)
        marked = torch.tensor(marks, dtype=torch.bool, device=sequences.device)
        return ContinuationBatch(sequences, marked, considered, examples, skipped)

    def compute(self, model: torch.nn.Module, batch: dict[str, Tensor], context: ObjectiveContext) -> ObjectiveOutput:
        built = self.build(model, batch, context.step)
        count = built.marked.sum()
        stats = {
            "skipped_share": stat(built.skipped, built.examples),
            "marked_share": stat(count, built.considered),
        }
        if int(count) == 0:
            context.global_count(count)  # every rank joins the collective
            stats["loss"], stats["p_marked"] = stat(0.0, 0.0), stat(0.0, 0.0)
            return ObjectiveOutput(zero_loss(model), stats)
        # Causal attention: tokens after the last marked position cannot change the loss; drop them.
        end = int(built.marked.any(0).nonzero().max()) + 1
        marked = built.marked[:, 1:end]  # logp[:, t - 1] is token t's
        logp = token_logprobs(model, built.input_ids[:, :end], None, context.hidden_path, positions=marked)
        p = logp.exp()
        tokens = -torch.log((1.0 - p).clamp_min(self.eps))
        total = torch.where(marked, tokens, torch.zeros_like(tokens)).sum()
        stats["loss"] = stat(total, count)
        stats["p_marked"] = stat(p.detach()[marked].sum(), count)
        return ObjectiveOutput(context.normalise(total, count), stats)
