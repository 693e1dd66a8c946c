"""ObjectiveRunner: what every entry point needs to run a list of objectives, log them and checkpoint them.

The entry points (``CausalLMModule``, the ``EntropyRegularizer`` callback, ``EntropyRegularizedTrainerLoss``)
each call the runner once per training step with the model, the batch, the optimizer step and the
regularizer coefficient ``scale``; the runner returns ``sum_i scale * weight_i * loss_i`` over the
objectives that run at this step (None when none does, so a step without objectives is bit-identical
to one without the runner).

``scale`` is the one that ``CoefficientSchedule`` sets on ``EntropyRegularizedLoss``: a schedule ramps the
objectives in together with the regularizers (a step where ``scale == 0`` runs no objective at all).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from entropy_reg.models.forward import SHARDING_STRATEGIES
from entropy_reg.training.ranks import rank_zero_warn

from .base import Objective, ObjectiveContext


def _collective_device(strategy: Any) -> torch.device:
    """Where a tensor must live for the strategy's collective (NCCL needs CUDA tensors)."""
    device = getattr(strategy, "root_device", None)
    if device is not None:
        return device
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_objectives(objectives: Sequence[Objective | dict] | None, owner: str) -> list[Objective]:
    """Objects from instances or ``{"class_path", "init_args"}`` dicts (checkpoints, YAML); checks names."""
    if objectives is None:
        return []
    if isinstance(objectives, Objective | dict):
        raise TypeError(f"{owner}: objectives must be a list, got one {type(objectives).__name__}")
    built = []
    for i, item in enumerate(objectives):
        if isinstance(item, dict):
            from jsonargparse import ArgumentParser

            parser = ArgumentParser(exit_on_error=False)
            parser.add_argument("--objective", type=Objective)
            # deepcopy: parse_object turns nested dicts of the caller's config into Namespaces in place.
            item = parser.instantiate_classes(parser.parse_object({"objective": copy.deepcopy(item)})).objective
        if not isinstance(item, Objective):
            raise TypeError(f"{owner}: objectives[{i}] must be an Objective, got {type(item).__name__}")
        built.append(item)
    names = [o.name for o in built]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{owner}: objectives must have distinct names (they are metric keys); repeated: {duplicates}")
    return built


class ObjectiveStats:
    """``(sum, count)`` per objective statistic since the last log, reduced across ranks in one collective."""

    def __init__(self, objectives: Sequence[Objective], prefix: str = "train/") -> None:
        self.prefix = prefix
        # A fixed layout: every rank packs the same keys in the same order, whatever ran locally.
        self.keys = [(o.name, k) for o in objectives for k in (*o.stat_keys, "ran_share")]
        self.reset()

    def reset(self) -> None:
        self._sums: dict[tuple[str, str], float] = {}
        self._counts: dict[tuple[str, str], float] = {}

    def add(self, name: str, key: str, total: Tensor | float, count: Tensor | float) -> None:
        k = (name, key)
        self._sums[k] = self._sums.get(k, 0.0) + float(total)
        self._counts[k] = self._counts.get(k, 0.0) + float(count)

    def reduce(self, strategy: Any = None) -> dict[str, Tensor]:
        """``{prefix + name (+ "/" + key): mean}`` for every statistic with a count on some rank; resets.

        Call on every rank at the same step (it is a collective under DDP).
        """
        if not self.keys:
            return {}
        packed = torch.tensor(
            [self._sums.get(k, 0.0) for k in self.keys] + [self._counts.get(k, 0.0) for k in self.keys],
            dtype=torch.float64,
        )
        if strategy is not None:
            packed = strategy.reduce(packed.to(_collective_device(strategy)), reduce_op="sum").cpu()
        self.reset()
        n = len(self.keys)
        out = {}
        for i, (name, key) in enumerate(self.keys):
            if packed[n + i] > 0:
                label = name if key == "loss" else f"{name}/{key}"
                out[self.prefix + label] = (packed[i] / packed[n + i]).to(torch.float32)
        return out


class ObjectiveRunner:
    """Runs objectives on a training step, keeps their statistics, and their state for checkpoints.

    Args:
        objectives: :class:`~entropy_reg.objectives.Objective` instances or ``class_path`` dicts.
        owner: the entry point's name, for error messages.
        prefix: metric key prefix.
    """

    def __init__(self, objectives: Sequence[Objective | dict] | None, owner: str, prefix: str = "train/") -> None:
        self.objectives = build_objectives(objectives, owner)
        self.owner = owner
        self.stats = ObjectiveStats(self.objectives, prefix)
        self._checked_strategy: str | None = None

    def __bool__(self) -> bool:
        return bool(self.objectives)

    def setup(self, tokenizer: Any | None) -> None:
        """Let each objective read the tokenizer (sentence ends, EOS) once."""
        for objective in self.objectives:
            objective.setup(tokenizer)

    def check_strategy(self, strategy_name: str) -> None:
        """Fail clearly where an objective cannot run (generation under parameter sharding)."""
        if strategy_name == self._checked_strategy:
            return
        self._checked_strategy = strategy_name
        needs = [o.name for o in self.objectives if o.needs_generation and o.weight > 0 and o.rate > 0]
        if needs and strategy_name in SHARDING_STRATEGIES:
            raise RuntimeError(
                f"{self.owner}: objective(s) {needs} generate with the model's KV cache outside the "
                f"strategy's forward, which {strategy_name} (sharded parameters) does not support. Use DDP, "
                "or drop SequenceUnlikelihood (RepetitionConsistency works with the logits path)."
            )

    def __call__(
        self,
        model: torch.nn.Module,
        batch: dict[str, Tensor],
        *,
        step: int,
        scale: float = 1.0,
        strategy: Any = None,
        hidden_path: bool = True,
    ) -> Tensor | None:
        """``sum scale * weight * loss`` over the objectives that run at ``step``; None when none runs.

        Call once per training step (micro-batch) on every rank, whatever that rank's own loss did:
        the decisions depend on ``step`` only, so all ranks run the same objectives and join the same
        collectives.

        Args:
            model: the causal LM (not a DDP wrapper: generation and the extra forward bypass it, and
                the gradients still reach the same parameters).
            batch: ``{input_ids, attention_mask, labels}`` of the training step.
            step: the optimizer step.
            scale: the regularizer coefficient (``CoefficientSchedule``); multiplies every weight.
            strategy: a Lightning strategy (``world_size``, ``reduce``); under several ranks the
                objectives are normalised over the global batch; None: this process alone.
            hidden_path: allow the chunked hidden-state path (off under parameter sharding anyway).
        """
        world_size, reduce_sum = 1, None
        if strategy is not None:
            name = type(strategy).__name__
            self.check_strategy(name)
            hidden_path = hidden_path and name not in SHARDING_STRATEGIES
            world_size = int(getattr(strategy, "world_size", 1))
            if world_size > 1:
                device = _collective_device(strategy)
                reduce_sum = lambda t: strategy.reduce(t.to(device), reduce_op="sum")  # noqa: E731
        context = ObjectiveContext(step=step, reduce_sum=reduce_sum, world_size=world_size, hidden_path=hidden_path)
        total: Tensor | None = None
        for objective in self.objectives:
            objective.observe(model, step)
            runs = float(scale) * objective.weight > 0 and objective.runs_at(step)
            self.stats.add(objective.name, "ran_share", float(runs), 1.0)
            if not runs:
                continue
            out = objective.compute(model, batch, context)
            for key, (value, count) in out.stats.items():
                self.stats.add(objective.name, key, value, count)
            term = out.loss * (float(scale) * objective.weight)
            total = term if total is None else total + term
        return total

    def state_dict(self) -> dict[str, Any]:
        """The objectives' random state: the seeds (every draw is a function of seed and step)."""
        return {"seeds": {o.name: o.seed for o in self.objectives}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        seeds = (state or {}).get("seeds", {})
        for objective in self.objectives:
            if objective.name in seeds and int(seeds[objective.name]) != objective.seed:
                rank_zero_warn(
                    f"{self.owner}: resuming objective {objective.name!r} with the checkpoint's seed "
                    f"{seeds[objective.name]} instead of the configured {objective.seed}"
                )
                objective.seed = int(seeds[objective.name])
        self.stats.reset()
