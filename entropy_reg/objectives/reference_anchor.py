"""ReferenceAnchor: keep the model close to itself-before-fine-tuning on its own continuations only.

A KL term to the pre-fine-tuning model on the *training batch* ("SFT + KL to base") pulls against what
SFT is there to learn. Collapse, though, is a property of the model's own outputs: so this objective
lets the model continue the batch's prompts (greedy, KV cache, no grad) and applies the KL only on
those generated positions, leaving the data's own contexts free to learn. ``source="batch"`` is the
plain off-policy variant, so that the two can be told apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import (
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    check_choice,
    check_int,
    checked,
    responses,
    stat,
    zero_loss,
)
from .logprobs import per_position
from .sequence_unlikelihood import continue_prefixes, eos_ids_of, mark_repeats

_SOURCES = ("continuation", "batch")
_DIRECTIONS = ("reverse", "forward")


def _log_softmax(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits, dim=-1)


def _reverse_kl(logits: Tensor, ref_logp: Tensor) -> Tensor:
    """KL(p_theta || p_ref) per row: mode-seeking, penalises mass the reference does not give."""
    logp = torch.log_softmax(logits, dim=-1)
    return (logp.exp() * (logp - ref_logp)).sum(dim=-1)


def _forward_kl(logits: Tensor, ref_logp: Tensor) -> Tensor:
    """KL(p_ref || p_theta) per row: mass-covering, penalises dropping what the reference gives."""
    return (ref_logp.exp() * (ref_logp - torch.log_softmax(logits, dim=-1))).sum(dim=-1)


@dataclass
class AnchorBatch:
    """Sequences and the rows (logits at t predicting t+1) where the KL is taken.

    Attributes:
        input_ids: ``[N, L]``; attention_mask: ``[N, L]`` or None.
        rows: ``[N, L-1]`` bool.
        repeats: continuation tokens completing a 4-gram seen before (a live repetition measure);
            considered: continuation tokens looked at (up to the first EOS).
        examples, skipped: examples looked at, and those without enough text.
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    rows: Tensor
    repeats: int
    considered: int
    examples: int
    skipped: int


class ReferenceAnchor(Objective):
    """KL between the model and the model before fine-tuning, on the model's own greedy continuations.

    On a ``rate`` share of optimizer steps: per training example, a prefix ending ``response_tokens``
    tokens into the response (prompt included, at most ``prefix_length`` tokens, the same length for
    the whole batch so that no padding is needed) is continued greedily for ``continuation_length``
    tokens by the current model (eval mode, KV cache, no grad); then, at every continuation token up to
    the first EOS, ``KL(p_theta || p_ref)`` (``direction="reverse"``; ``"forward"``: ``KL(p_ref ||
    p_theta)``) over the full vocabulary, mean over those tokens (of all ranks under DDP). A loop that
    SFT starts to build shows up in the continuations and is pulled back toward the reference, which
    did not loop there; the SFT data's own positions are never touched (``source="continuation"``).
    ``source="batch"`` instead takes the KL on the training batch's label positions (the usual
    "SFT + KL to the base model", off-policy, no generation).

    The reference: with ``reference=None``, a peft model's own weights with its adapters disabled
    (no copy), else a frozen copy of the model taken at the first training step (one more model in
    memory: 0.54 GB for SmolLM2-135M in float32). A resumed run has no such step: it needs
    ``reference=<a model source>`` (``embedded:smollm2-135m-instruct``, an HF directory, a ``.ckpt``),
    loaded frozen at the first step. ``reuse_steps=k`` reuses one generation for k steps that run the
    objective (the KL is recomputed every time), cutting the generation cost k-fold.

    Statistics (``train/reference_anchor`` is the mean KL): ``reference_anchor/rep4_share`` (share of
    continuation tokens completing a repeated 4-gram: how much the model loops on its own, live),
    ``/skipped_share``, ``/ran_share``.

    Args:
        weight: multiplier of the loss (>= 0).
        rate: share of optimizer steps that run it, in [0, 1].
        source: ``"continuation"`` or ``"batch"``.
        direction: ``"reverse"`` (KL(p_theta || p_ref)) or ``"forward"``.
        response_tokens: response tokens kept at the end of each prefix (>= 0).
        prefix_length: longest prefix (>= 1 tokens).
        continuation_length: tokens generated per prefix (>= 1).
        reuse_steps: run steps that share one generation (>= 1).
        reference: a model source for the reference, or None (see above).
        seed: seed of the ``rate`` draws.
        ignore_index: label value of prompt/padding positions.
    """

    name = "reference_anchor"
    stat_keys = ("loss", "rep4_share", "skipped_share")
    source = checked(check_choice, _SOURCES)
    direction = checked(check_choice, _DIRECTIONS)
    response_tokens = checked(check_int, 0)
    prefix_length = checked(check_int, 1)
    continuation_length = checked(check_int, 1)
    reuse_steps = checked(check_int, 1)

    def __init__(
        self,
        weight: float = 1.0,
        rate: float = 0.5,
        source: str = "continuation",
        direction: str = "reverse",
        response_tokens: int = 16,
        prefix_length: int = 64,
        continuation_length: int = 48,
        reuse_steps: int = 1,
        reference: str | None = None,
        seed: int = 0,
        ignore_index: int = -100,
    ) -> None:
        super().__init__(weight=weight, rate=rate, seed=seed)
        owner = type(self).__name__
        if reference is not None and (not isinstance(reference, str) or not reference.strip()):
            raise ValueError(f"{owner}: reference must be a model source (path or name) or None, got {reference!r}")
        self.source = source
        self.direction = direction
        self.response_tokens = response_tokens
        self.prefix_length = prefix_length
        self.continuation_length = continuation_length
        self.reuse_steps = reuse_steps
        self.reference = reference
        self.ignore_index = int(ignore_index)
        self._tokenizer: Any | None = None
        self._reference_model: torch.nn.Module | None = None
        self._cache: tuple[int, AnchorBatch] | None = None
        self._runs_since_generation = 0

    @property
    def needs_generation(self) -> bool:  # type: ignore[override]
        return self.source == "continuation"

    def setup(self, tokenizer: Any | None) -> None:
        self._tokenizer = tokenizer  # optional: EOS and pad ids also come from the model's config

    # -- the reference --------------------------------------------------------------------------------
    def observe(self, model: torch.nn.Module, step: int) -> None:
        if self._reference_model is not None or _has_adapters(model) and self.reference is None:
            return
        if self.weight <= 0 or self.rate <= 0:
            return
        if self.reference is not None:
            from entropy_reg.models import load_model_and_tokenizer

            reference, _ = load_model_and_tokenizer(self.reference)
        elif step != 0:
            raise RuntimeError(
                f"ReferenceAnchor: the first training step seen is {step}, not 0 (a resumed run?): the model "
                "before fine-tuning is gone. Pass reference=<its source> (e.g. embedded:smollm2-135m-instruct "
                "or the checkpoint the run started from)."
            )
        else:
            reference = copy.deepcopy(model)
        device = next(model.parameters()).device
        self._reference_model = reference.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def _reference_logp(self, model: torch.nn.Module, built: AnchorBatch, hidden_path: bool) -> Tensor:
        if self._reference_model is not None:
            return per_position(self._reference_model, built.input_ids, built.rows, _log_softmax,
                                attention_mask=built.attention_mask, hidden_path=hidden_path)
        if not _has_adapters(model):
            raise RuntimeError("ReferenceAnchor: no reference model: observe(model, step) must run before compute")
        was_training = model.training
        model.eval()  # no adapter dropout either: the reference is the deterministic base model
        try:
            with model.disable_adapter():
                return per_position(model, built.input_ids, built.rows, _log_softmax,
                                    attention_mask=built.attention_mask, hidden_path=hidden_path)
        finally:
            model.train(was_training)

    # -- the batch ------------------------------------------------------------------------------------
    def _prefixes(self, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        rows, skipped = [], 0
        for ids, start in responses(batch, self.ignore_index):
            end = min(start + self.response_tokens, len(ids))
            if end < 1:
                skipped += 1
                continue
            rows.append(ids[max(0, end - self.prefix_length) : end])
        if not rows:
            return batch["input_ids"].new_empty(0, 1), skipped
        width = min(len(r) for r in rows)  # one length for all: no padding, no position-id bookkeeping
        return torch.stack([r[len(r) - width :] for r in rows]), skipped

    def build(self, model: torch.nn.Module, batch: dict[str, Tensor], step: int) -> AnchorBatch:
        if self.source == "batch":
            labels = batch.get("labels")
            input_ids = batch["input_ids"]
            if labels is None:
                labels = input_ids.masked_fill(batch["attention_mask"] == 0, self.ignore_index) \
                    if batch.get("attention_mask") is not None else input_ids
            rows = labels[:, 1:] != self.ignore_index
            return AnchorBatch(input_ids, batch.get("attention_mask"), rows, 0, 0, input_ids.shape[0], 0)
        if self._cache is not None and self._runs_since_generation < self.reuse_steps:
            self._runs_since_generation += 1
            return self._cache[1]
        prefixes, skipped = self._prefixes(batch)
        examples = batch["input_ids"].shape[0]
        if prefixes.shape[0] == 0:
            empty = prefixes.new_empty(0, 2)
            return AnchorBatch(empty, None, empty[:, 1:].bool(), 0, 0, examples, skipped)
        sequences = continue_prefixes(model, prefixes, self.continuation_length, self._tokenizer, {"do_sample": False},
                                      self.step_seed(step))
        eos = set(eos_ids_of(self._tokenizer, model))
        P, L = prefixes.shape[1], sequences.shape[1]
        rows = torch.zeros(sequences.shape[0], L - 1, dtype=torch.bool, device=sequences.device)
        repeats = considered = 0
        for i, row in enumerate(sequences.tolist()):
            cont = row[P:]
            ends = [k for k, tok in enumerate(cont) if tok in eos]
            n = ends[0] + 1 if ends else len(cont)
            rows[i, P - 1 : P - 1 + n] = True  # logits at P-1+k predict continuation token k
            considered += n
            repeats += sum(mark_repeats(row, P, 4, sorted(eos))[P : P + n])
        built = AnchorBatch(sequences, None, rows, repeats, considered, examples, skipped)
        self._cache, self._runs_since_generation = (step, built), 1
        return built

    def compute(self, model: torch.nn.Module, batch: dict[str, Tensor], context: ObjectiveContext) -> ObjectiveOutput:
        built = self.build(model, batch, context.step)
        count = built.rows.sum()
        stats = {"skipped_share": stat(built.skipped, built.examples),
                 "rep4_share": stat(built.repeats, built.considered)}
        if int(count) == 0:
            context.global_count(count)  # every rank joins the collective
            stats["loss"] = stat(0.0, 0.0)
            return ObjectiveOutput(zero_loss(model), stats)
        ref_logp = self._reference_logp(model, built, context.hidden_path)
        kl = _reverse_kl if self.direction == "reverse" else _forward_kl
        # ref_logp is [R, V] (the scored rows only); per_position hands each chunk its slice of it.
        values = per_position(model, built.input_ids, built.rows, kl, attention_mask=built.attention_mask,
                              hidden_path=context.hidden_path, selected_inputs=(ref_logp,))
        total = values.sum()
        stats["loss"] = stat(total, count)
        return ObjectiveOutput(context.normalise(total, count), stats)


def _has_adapters(model: torch.nn.Module) -> bool:
    return callable(getattr(model, "disable_adapter", None)) and bool(getattr(model, "peft_config", None))
