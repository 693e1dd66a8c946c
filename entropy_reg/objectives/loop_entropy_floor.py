"""LoopEntropyFloor: the entropy floor (or tail-mass floor) applied where the black hole forms.

The row-wise ``EntropyFloor`` and ``TailMassFloor`` act on every position of the SFT data, most of which
are legitimately confident. Low-entropy collapse is entropy *falling with every copy* of a repeated
span; this objective builds DITTO's pseudo-repetitive batch (a response sentence repeated after its
prefix) and penalises exactly that fall.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .base import ObjectiveContext, ObjectiveOutput, check_choice, check_int, checked, stat, zero_loss
from .logprobs import per_position
from .repetition_consistency import PseudoRepetitionObjective

_STATISTICS = ("entropy", "tail")


def _entropy(logits: Tensor) -> Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def _tail_mass(top_k: int):
    def tail(logits: Tensor) -> Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        return 1.0 - logp.topk(min(top_k, logits.shape[-1]), dim=-1).values.exp().sum(dim=-1)

    return tail


class LoopEntropyFloor(PseudoRepetitionObjective):
    """Copies n >= 2 of a repeated sentence pay when their entropy falls below copy 1's.

    On a ``rate`` share of optimizer steps the objective builds DITTO's pseudo-repetitive batch (see
    :class:`~entropy_reg.objectives.RepetitionConsistency`: one response sentence per example, repeated
    after its prefix up to ``max_length`` tokens), runs the model on it and, for every token of copy
    n >= 2, takes ``relu(H_1 - H_n)``: ``H_n`` the entropy (nats) of the distribution that predicts the
    token in copy n, ``H_1`` the detached entropy at the same token of copy 1. The first copy is the
    model's own uncertainty about the sentence; the loop is the model growing more certain with each
    repeat, and only that fall pays. ``statistic="tail"`` does the same with the tail mass beyond the
    ``top_k`` most likely tokens (the tail-mass floor of :class:`~entropy_reg.losses.TailMassFloor`,
    with copy 1's tail as the floor). Mean over the copy-n tokens (of all ranks under DDP).

    Unlike DITTO it never touches the probability of the repeated token itself: it keeps the
    distribution from collapsing onto it.

    Statistics (``train/loop_entropy_floor`` is the loss): ``loop_entropy_floor/first`` (mean
    statistic in copy 1), ``/repeat`` (mean in copies n >= 2), ``/fall_share`` (share of copy-n tokens
    below their copy-1 twin: the loop forming), ``/skipped_share``, ``/ran_share``.

    Args:
        weight: multiplier of the loss (>= 0).
        rate: share of optimizer steps that run it, in [0, 1].
        statistic: ``"entropy"`` (nats) or ``"tail"`` (mass beyond the top ``top_k``).
        top_k: k of the tail mass (>= 1); unused with ``statistic="entropy"``.
        min_sentence_tokens, max_sentence_tokens, max_length, max_prefix_tokens, sentence_end_ids,
            ignore_index: the pseudo-repetitive batch, as in ``RepetitionConsistency``.
        seed: seed of the ``rate`` draws and the sentence choice.
    """

    name = "loop_entropy_floor"
    stat_keys = ("loss", "first", "repeat", "fall_share", "skipped_share")
    statistic = checked(check_choice, _STATISTICS)
    top_k = checked(check_int, 1)

    def __init__(
        self,
        weight: float = 1.0,
        rate: float = 0.5,
        statistic: str = "entropy",
        top_k: int = 5,
        min_sentence_tokens: int = 4,
        max_sentence_tokens: int = 32,
        max_length: int | None = None,
        max_prefix_tokens: int | None = None,
        seed: int = 0,
        sentence_end_ids: Iterable[int] | None = None,
        ignore_index: int = -100,
    ) -> None:
        super().__init__(weight=weight, rate=rate, seed=seed)
        self.statistic = statistic
        self.top_k = top_k
        self.init_sentences(min_sentence_tokens, max_sentence_tokens, max_length, max_prefix_tokens,
                            sentence_end_ids, ignore_index)

    def compute(self, model: torch.nn.Module, batch: dict[str, Tensor], context: ObjectiveContext) -> ObjectiveOutput:
        built = self.build(batch, context.step)
        N, T = built.input_ids.shape
        device = built.input_ids.device
        t = torch.arange(T, device=device)[None, :]
        period, prefix = built.period[:, None], built.prefix[:, None]
        # Token t of copy n >= 2 and its twin in copy 1; token 0 has no predicting distribution.
        first = prefix + (t - prefix).remainder(period.clamp_min(1))
        penalised = built.penalised & (first >= 1)
        count = penalised.sum()
        stats = {"skipped_share": stat(built.skipped, built.examples)}
        if int(count) == 0:
            context.global_count(count)  # every rank joins the collective
            for key in ("loss", "first", "repeat", "fall_share"):
                stats[key] = stat(0.0, 0.0)
            return ObjectiveOutput(zero_loss(model), stats)
        # The statistic of the distribution predicting token t sits at row t - 1; copies start at P.
        rows = (t[:, 1:] >= prefix.clamp_min(1))
        fn = _entropy if self.statistic == "entropy" else _tail_mass(self.top_k)
        values = per_position(model, built.input_ids, rows, fn, hidden_path=context.hidden_path)
        by_token = values.new_zeros(N, T)
        by_token[:, 1:] = by_token[:, 1:].masked_scatter(rows, values)
        floor = by_token.detach().gather(1, first.expand(N, T))
        fall = torch.where(penalised, torch.relu(floor - by_token), torch.zeros_like(by_token))
        total = fall.sum()
        stats["loss"] = stat(total, count)
        stats["first"] = stat(floor[penalised].sum(), count)
        stats["repeat"] = stat(by_token.detach()[penalised].sum(), count)
        stats["fall_share"] = stat((by_token.detach() < floor)[penalised].sum(), count)
        return ObjectiveOutput(context.normalise(total, count), stats)
