"""RepetitionConsistency: DITTO (Xu et al., NeurIPS 2022, "Learning to Break the Loop").

Trains on pseudo-repetitive sequences so that a token's probability does not grow from one copy of a
sentence to the next: the self-reinforcing loop behind low-entropy collapse.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    check_bool,
    check_int,
    check_open_unit,
    check_unit,
    checked,
    example_seed,
    stat,
    zero_loss,
)
from .logprobs import token_logprobs
from .sentences import sentence_end_ids, sentence_spans


@dataclass
class RepetitionBatch:
    """Pseudo-repetitive sequences: ``prefix + s + s + s ...`` cut at ``T`` tokens.

    Attributes:
        input_ids: ``[N, T]`` (N = usable examples; no padding).
        period: ``[N]`` sentence length L of each row (copy n+1 starts L tokens after copy n).
        penalised: ``[N, T]`` bool, token positions in copies n >= 2 whose copy-(n-1) twin has a
            probability (position >= 1).
        prefix: ``[N]`` prefix length P of each row (copy 1 starts at P).
        examples: examples looked at; skipped: those without a usable sentence.
    """

    input_ids: Tensor
    period: Tensor
    penalised: Tensor
    prefix: Tensor
    examples: int
    skipped: int


def build_repetition_batch(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor | None,
    ends: frozenset[int],
    min_tokens: int,
    max_tokens: int,
    length: int,
    max_prefix_tokens: int | None,
    step_seed: int,
    ignore_index: int = -100,
) -> RepetitionBatch:
    """One pseudo-repetitive sequence per example with a usable sentence (see :class:`RepetitionConsistency`)."""
    rows, periods = [], []
    skipped = 0
    max_prefix = length // 2 if max_prefix_tokens is None else max_prefix_tokens
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool() if attention_mask is not None else torch.ones_like(input_ids[b], dtype=torch.bool)
        ids = input_ids[b][keep].tolist()
        if labels is not None:
            answer = (labels[b][keep] != ignore_index).nonzero().flatten().tolist()
            span = (answer[0], answer[-1] + 1) if answer else (0, 0)
        else:
            span = (0, len(ids))
        # Two full copies must fit: otherwise no token has a previous copy to compare with.
        spans = [s for s in sentence_spans(ids, *span, ends, min_tokens, max_tokens) if 2 * (s[1] - s[0]) <= length]
        if not spans:
            skipped += 1
            continue
        a, e = random.Random(example_seed(step_seed, input_ids[b][keep])).choice(spans)
        sentence, period = ids[a:e], e - a
        prefix_len = min(a, max_prefix, length - 2 * period)
        row = ids[a - prefix_len : a] + sentence * (-(-(length - prefix_len) // period))
        rows.append(row[:length])
        periods.append((period, prefix_len))
    device = input_ids.device
    if not rows:
        empty = torch.empty(0, length, dtype=input_ids.dtype, device=device)
        none = torch.empty(0, dtype=torch.long, device=device)
        return RepetitionBatch(empty, none, empty.bool(), none, input_ids.shape[0], skipped)
    period = torch.tensor([p for p, _ in periods], device=device)
    prefix = torch.tensor([q for _, q in periods], device=device)
    t = torch.arange(length, device=device)[None, :]
    # Copy n >= 2 starts at prefix + L; its twin one copy earlier (t - L) needs a probability (t - L >= 1).
    penalised = (t >= (prefix + period)[:, None]) & (t - period[:, None] >= 1)
    return RepetitionBatch(torch.tensor(rows, dtype=input_ids.dtype, device=device), period, penalised, prefix,
                           input_ids.shape[0], skipped)


def repetition_token_loss(
    logp: Tensor, period: Tensor, penalised: Tensor, lam: float, one_sided: bool, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token DITTO loss ``-log(max(eps, 1 - |p_n - lam * sg(p_{n-1})|))`` on penalised positions.

    Args:
        logp: ``[N, T-1]`` ``log p(x_t | x_<t)`` for t = 1..T-1.
        period: ``[N]`` copy length L per row.
        penalised: ``[N, T]`` bool.
        lam: the target ratio between consecutive copies' probabilities.
        one_sided: only ``p_n > lam * p_{n-1}`` pays (``relu`` instead of ``abs``).
        eps: clamp of ``1 - |...|`` inside the log.

    Returns:
        ``(loss [N, T], p [N, T], p_previous [N, T])``: loss 0 off the penalised positions; ``p`` the
        token probability by token position (0 at position 0), ``p_previous`` its detached twin one copy earlier.
    """
    p = F.pad(logp.exp(), (1, 0))
    twin = (torch.arange(p.shape[1], device=p.device)[None, :] - period[:, None]).clamp_min(0)
    p_previous = p.detach().gather(1, twin)
    gap = p - lam * p_previous
    gap = gap.clamp_min(0.0) if one_sided else gap.abs()
    loss = -torch.log((1.0 - gap).clamp_min(eps))
    return torch.where(penalised, loss, torch.zeros_like(loss)), p, p_previous


class PseudoRepetitionObjective(Objective):
    """Base of the objectives that train on DITTO's pseudo-repetitive batch (:func:`build_repetition_batch`).

    Owns the sentence choice: subclasses call ``init_sentences(...)`` in ``__init__`` and ``build(batch,
    step)`` in ``compute``; the sentence-end tokens come from the tokenizer at ``setup``.
    """

    min_sentence_tokens = checked(check_int, 1)
    max_sentence_tokens = checked(check_int, 1)
    max_length = checked(check_int, 2, allow_none=True)
    max_prefix_tokens = checked(check_int, 0, allow_none=True)

    def init_sentences(self, min_sentence_tokens: int, max_sentence_tokens: int, max_length: int | None,
                       max_prefix_tokens: int | None, sentence_end_ids: Iterable[int] | None,
                       ignore_index: int) -> None:
        owner = type(self).__name__
        self.min_sentence_tokens = min_sentence_tokens
        self.max_sentence_tokens = max_sentence_tokens
        if self.max_sentence_tokens < self.min_sentence_tokens:
            raise ValueError(
                f"{owner}: max_sentence_tokens ({max_sentence_tokens}) must be >= min_sentence_tokens "
                f"({min_sentence_tokens})"
            )
        self.max_length = max_length
        self.max_prefix_tokens = max_prefix_tokens
        self.ignore_index = int(ignore_index)
        self.sentence_end_ids = None if sentence_end_ids is None else sorted(int(i) for i in sentence_end_ids)
        if self.sentence_end_ids is not None and not self.sentence_end_ids:
            raise ValueError(f"{owner}: sentence_end_ids must not be empty (None: found from the tokenizer)")
        self._ends: frozenset[int] | None = None if sentence_end_ids is None else frozenset(self.sentence_end_ids)

    def setup(self, tokenizer: Any | None) -> None:
        if self._ends is not None:
            return
        if tokenizer is None:
            raise ValueError(
                f"{type(self).__name__} needs a tokenizer to find the sentence-end tokens (none was found); "
                "give the module/datamodule a `tokenizer` attribute or pass sentence_end_ids=[...]"
            )
        self._ends = sentence_end_ids(tokenizer)

    def build(self, batch: dict[str, Tensor], step: int) -> RepetitionBatch:
        """The pseudo-repetitive batch for optimizer ``step`` (deterministic given the step and the batch)."""
        if self._ends is None:
            raise RuntimeError(f"{type(self).__name__}.setup(tokenizer) must run before the first step")
        input_ids = batch["input_ids"]
        return build_repetition_batch(
            input_ids, batch.get("attention_mask"), batch.get("labels"), self._ends,
            self.min_sentence_tokens, self.max_sentence_tokens, self.max_length or input_ids.shape[1],
            self.max_prefix_tokens, self.step_seed(step), self.ignore_index,
        )


class RepetitionConsistency(PseudoRepetitionObjective):
    """DITTO: penalise probabilities that grow from one copy of a repeated sentence to the next.

    On a ``rate`` share of optimizer steps, one pseudo-repetitive sequence is built per training
    example: a sentence of the example's response (a token span ending at a sentence-end token — one
    whose decoded text ends in ``.`` ``!`` ``?`` ``。`` ``！`` ``？`` or a newline, found once from the
    tokenizer's vocabulary, so any tokenizer and Chinese work), chosen at random, after a prefix (the
    tokens before it, prompt included, left-truncated), repeated until ``max_length`` tokens (the last
    copy may be partial). The model runs on that batch (same size as the training batch) and every
    token of copy n >= 2 pays ``-log(max(eps, 1 - |p_n - lam * sg(p_{n-1})|))``, with ``p_n`` its
    probability in copy n and ``sg(p_{n-1})`` the detached probability of the same token one copy
    earlier; copy 1 only serves as that reference. The loss is the mean over penalised tokens (of all
    ranks under DDP). With ``one_sided=True`` a token pays ``-log(max(eps, 1 - relu(p_n - lam p_{n-1})))``:
    only growth beyond ``lam`` times the previous copy is penalised, and tokens below it count in the
    mean with loss 0.

    Examples without a usable sentence (none of ``min_sentence_tokens``..``max_sentence_tokens``
    tokens, or two copies would not fit) are skipped and counted (``skipped_share``). A rank with
    none contributes an exact 0 reaching every parameter.

    Statistics (``train/ditto`` is the loss): ``ditto/p_repeat`` (mean ``p_n`` on penalised tokens),
    ``ditto/p_previous`` (mean ``p_{n-1}``), ``ditto/rise_share`` (share with ``p_n > p_{n-1}``: the
    loop reinforcing itself), ``ditto/skipped_share`` (share of examples skipped), ``ditto/ran_share``.

    Args:
        weight: multiplier of the loss (>= 0).
        lam: target ratio of consecutive copies' probabilities, in [0, 1] (the paper's runs: 0.5).
        rate: share of optimizer steps that run it, in [0, 1] (the paper mixes 50/50 with MLE).
        min_sentence_tokens: shortest usable sentence (>= 1).
        max_sentence_tokens: longest usable sentence (>= min_sentence_tokens).
        one_sided: penalise only ``p_n > lam * p_{n-1}``.
        max_length: tokens per pseudo-repetitive sequence; None: the training batch's length.
        max_prefix_tokens: longest prefix kept before the first copy; None: half of the length; 0: none.
        eps: clamp inside the log, in (0, 1).
        seed: seed of the ``rate`` draws and of the sentence choice.
        sentence_end_ids: token ids that end a sentence; None: found from the tokenizer at setup.
        ignore_index: label value of prompt/padding positions (the response is where labels are not it).
    """

    name = "ditto"
    stat_keys = ("loss", "p_repeat", "p_previous", "rise_share", "skipped_share")
    lam = checked(check_unit)
    one_sided = checked(check_bool)
    eps = checked(check_open_unit)

    def __init__(
        self,
        weight: float = 1.0,
        lam: float = 0.5,
        rate: float = 0.5,
        min_sentence_tokens: int = 4,
        max_sentence_tokens: int = 32,
        one_sided: bool = False,
        max_length: int | None = None,
        max_prefix_tokens: int | None = None,
        eps: float = 1e-6,
        seed: int = 0,
        sentence_end_ids: Iterable[int] | None = None,
        ignore_index: int = -100,
    ) -> None:
        super().__init__(weight=weight, rate=rate, seed=seed)
        self.lam = lam
        self.one_sided = one_sided
        self.eps = eps
        self.init_sentences(min_sentence_tokens, max_sentence_tokens, max_length, max_prefix_tokens,
                            sentence_end_ids, ignore_index)

    def compute(self, model: torch.nn.Module, batch: dict[str, Tensor], context: ObjectiveContext) -> ObjectiveOutput:
        built = self.build(batch, context.step)
        count = built.penalised.sum()
        stats = {"skipped_share": stat(built.skipped, built.examples)}
        if int(count) == 0:
            context.global_count(count)  # every rank joins the collective
            for key in ("loss", "p_repeat", "p_previous", "rise_share"):
                stats[key] = stat(0.0, 0.0)
            return ObjectiveOutput(zero_loss(model), stats)
        # Only tokens of the copies (t >= P) are read: logp[:, t - 1] for t >= P.
        needed = torch.arange(1, built.input_ids.shape[1], device=count.device)[None, :] >= built.prefix[:, None]
        logp = token_logprobs(model, built.input_ids, None, context.hidden_path, positions=needed)
        tokens, p, p_previous = repetition_token_loss(
            logp, built.period, built.penalised, self.lam, self.one_sided, self.eps
        )
        total = tokens.sum()
        mask = built.penalised
        stats["loss"] = stat(total, count)
        stats["p_repeat"] = stat(p.detach()[mask].sum(), count)
        stats["p_previous"] = stat(p_previous[mask].sum(), count)
        stats["rise_share"] = stat((p.detach() > p_previous)[mask].sum(), count)
        return ObjectiveOutput(context.normalise(total, count), stats)
