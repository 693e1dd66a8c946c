"""EntropyRegularizedLoss: cross-entropy plus entropy-aware regularizers in one chunked pass.

Two entry points share one kernel (``stats.py``):

- ``loss_fn(logits=[B,T,V], labels=[B,T], input_ids=[B,T])``: the model already built logits.
- ``loss_fn(hidden=[B,T,H], lm_head_weight=[V,H], labels=..., input_ids=...)``: the LM-head matmul
  happens per chunk of rows (Liger / Cut-Cross-Entropy style), so [tokens, V] logits never exist.

The gradient is computed in the forward pass, chunk by chunk, in closed form (the loss is a scalar at
the end of the graph, so only the scalar upstream gradient is unknown then; backward multiplies by it).
This is what makes the hidden path cost one matmul forward and two "backward" matmuls, like a plain
matmul + cross-entropy, instead of recomputing logits in backward. Consequences: ``scale`` and
``num_tokens`` are read at forward time, and on the logits path the gradient buffer is handed to autograd
as it is when the upstream gradient is 1, so a second ``backward(retain_graph=True)`` through the same
loss is not supported (compute the loss again instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from entropy_reg.validation import check_int

from .copyset import CopySetIndex
from .regularizers import Regularizer, _check_weight, as_integer, parse_contrastive_key
from .stats import ChunkRows, chunk_grad_, chunk_stats

# Target size of one [chunk, V] float32 buffer. Two such buffers live at a time.
_CHUNK_BYTES = 64 * 2**20
# ...but at most an eighth of the rows (not under 4 MiB a buffer): for a small batch two 64 MiB buffers
# would outweigh the [tokens, V] logits themselves (SmolLM2 at 4 x 128: 134 MiB of buffers, 96 MiB of logits).
_MIN_CHUNK_BYTES = 4 * 2**20


@dataclass
class LossOutput:
    """Result of one loss call.

    Attributes:
        loss: scalar with grad: (CE + scale * sum_i w_i R_i) summed over rows / normaliser.
        metrics: detached means over non-ignored rows (0 when there are none).
        sums: detached float64 sums over non-ignored rows, same keys as ``metrics`` (for DDP:
            all-reduce ``sums`` and ``count`` separately, then divide).
        count: int64 scalar, the number of non-ignored rows.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    sums: dict[str, Tensor] = field(default_factory=dict)
    count: Tensor = field(default_factory=lambda: torch.tensor(0))


def _positive_int_or_none(name: str, value: int | None) -> int | None:
    return check_int("EntropyRegularizedLoss", name, value, 1, allow_none=True)


class EntropyRegularizedLoss(nn.Module):
    """Cross-entropy + entropy-aware regularizers, with per-token statistics, in one chunked pass.

    Labels follow the Hugging Face convention: same shape as ``input_ids``; the shift happens inside
    (logits at t predict labels at t+1); ``ignore_index`` rows are skipped. Math is float32 (float64
    if the input is float64) whatever the input dtype. With every regularizer weight 0 the loss equals
    ``F.cross_entropy`` on the shifted logits.

    Args:
        regularizers: row-wise penalties (``TailMassFloor``, ``EntropyFloor``, ``AntiCopyPenalty``,
            ``ConfidencePenalty``, ``LabelSmoothing``, ``ContrastiveToken``).
        ignore_index: label value that marks rows without a target.
        stats_top_k: k of the logged ``tail_mass`` metric.
        copy_context: "all" (every attended position) or "response" (positions whose label is not
            ignored) form the copy set.
        copy_window: only the last W positions (the input at t included) form the copy set.
        chunk_size: rows per chunk; default: about 64 MiB of float32 logits per chunk, at most an
            eighth of the rows (but not under 4 MiB).
        include_ce: False returns only the weighted regularizer sum in ``.loss`` (for a callback that
            adds to a loss the user already computed); the metrics still hold ``ce``.

    Attributes:
        scale: global multiplier of all regularizer terms (coefficient schedules set it).
    """

    def __init__(
        self,
        regularizers: Sequence[Regularizer] = (),
        ignore_index: int = -100,
        stats_top_k: int = 20,
        copy_context: str = "all",
        copy_window: int | None = None,
        chunk_size: int | None = None,
        include_ce: bool = True,
    ) -> None:
        super().__init__()
        self.regularizers = regularizers
        self.ignore_index = ignore_index
        self.stats_top_k = stats_top_k
        self.copy_context = copy_context
        self.copy_window = copy_window
        self.chunk_size = chunk_size
        self.include_ce = include_ce
        self.scale = 1.0

    # Every parameter is validated whenever it is set (constructor or attribute), so a schedule or a
    # user writing ``loss_fn.scale = float("nan")`` gets the constructor's error, not a silent NaN.
    @property
    def regularizers(self) -> list[Regularizer]:
        return self._regularizers

    @regularizers.setter
    def regularizers(self, value: Sequence[Regularizer]) -> None:
        value = list(value)
        for i, reg in enumerate(value):
            if not isinstance(reg, Regularizer):
                raise TypeError(
                    f"EntropyRegularizedLoss: regularizers[{i}] is a {type(reg).__name__}, not a Regularizer "
                    "(TailMassFloor, EntropyFloor, AntiCopyPenalty, ConfidencePenalty, LabelSmoothing)"
                )
        self._regularizers = value

    @property
    def term_names(self) -> list[str]:
        """Metric key of each regularizer: its ``name``, suffixed ``_1``, ``_2`` ... when repeated."""
        return self._unique_names(self._regularizers)

    @property
    def ignore_index(self) -> int:
        return self._ignore_index

    @ignore_index.setter
    def ignore_index(self, value: int) -> None:
        number = as_integer(value)
        if number is None:
            raise ValueError(f"EntropyRegularizedLoss: ignore_index must be an integer, got {value!r}")
        self._ignore_index = number

    @property
    def stats_top_k(self) -> int:
        return self._stats_top_k

    @stats_top_k.setter
    def stats_top_k(self, value: int) -> None:
        value = _positive_int_or_none("stats_top_k", value)
        if value is None:
            raise ValueError("EntropyRegularizedLoss: stats_top_k must be an integer >= 1")
        self._stats_top_k = value

    @property
    def copy_context(self) -> str:
        return self._copy_context

    @copy_context.setter
    def copy_context(self, value: str) -> None:
        if value not in ("all", "response"):
            raise ValueError(f"EntropyRegularizedLoss: copy_context must be 'all' or 'response', got {value!r}")
        self._copy_context = value

    @property
    def copy_window(self) -> int | None:
        return self._copy_window

    @copy_window.setter
    def copy_window(self, value: int | None) -> None:
        self._copy_window = _positive_int_or_none("copy_window", value)

    @property
    def chunk_size(self) -> int | None:
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int | None) -> None:
        self._chunk_size = _positive_int_or_none("chunk_size", value)

    @property
    def include_ce(self) -> bool:
        return self._include_ce

    @include_ce.setter
    def include_ce(self, value: bool) -> None:
        self._include_ce = bool(value)

    @property
    def scale(self) -> float:
        """Global multiplier of all regularizer terms (finite, >= 0); coefficient schedules set it."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = _check_weight("EntropyRegularizedLoss", value, "scale")

    @staticmethod
    def _unique_names(regularizers: list[Regularizer]) -> list[str]:
        names: list[str] = []
        for reg in regularizers:
            name, i = reg.name, 1
            while name in names:
                name, i = f"{reg.name}_{i}", i + 1
            names.append(name)
        return names

    def extra_repr(self) -> str:
        return (
            f"regularizers={self.regularizers}, ignore_index={self.ignore_index}, stats_top_k={self.stats_top_k}, "
            f"copy_context={self.copy_context!r}, copy_window={self.copy_window}, chunk_size={self.chunk_size}"
        )

    # ----------------------------------------------------------------------------------------------
    def forward(
        self,
        logits: Tensor | None = None,
        labels: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        hidden: Tensor | None = None,
        lm_head_weight: Tensor | None = None,
        lm_head_bias: Tensor | None = None,
        num_tokens: float | Tensor | None = None,
        include_ce: bool | None = None,
    ) -> LossOutput:
        """Compute the loss and its statistics.

        Args:
            logits: ``[B, T, V]`` (any float dtype); or give ``hidden`` and ``lm_head_weight``.
            labels: ``[B, T]`` int, HF convention (unshifted), ``ignore_index`` for no target.
            input_ids: ``[B, T]`` int; needed for the copy set (copy mass, anti-copy).
            attention_mask: ``[B, T]``; positions with 0 never enter the copy set.
            hidden: ``[B, T, H]`` final hidden states (after the final norm).
            lm_head_weight: ``[V, H]``.
            lm_head_bias: ``[V]`` or None.
            num_tokens: normaliser of the summed loss (e.g. a global token count / world size under
                DDP); default: the local number of non-ignored rows.
            include_ce: overrides the constructor's ``include_ce`` for this call.

        Returns:
            ``LossOutput``.
        """
        src, weight, bias, V = self._check_inputs(logits, labels, input_ids, attention_mask, hidden, lm_head_weight, lm_head_bias)
        include_ce = self.include_ce if include_ce is None else bool(include_ce)
        plan = _Plan(self, src, weight, bias, V, labels, input_ids, attention_mask, num_tokens, include_ce)
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (src, weight, bias))
        if needs_grad:
            loss = _OnePassFunction.apply(src, weight, bias, plan)
        else:
            loss = plan.run(want_grad=False)[0]
        return plan.output(loss)

    def _check_inputs(self, logits, labels, input_ids, attention_mask, hidden, weight, bias):
        where = "EntropyRegularizedLoss"
        if (logits is None) == (hidden is None):
            raise ValueError(f"{where}: pass exactly one of `logits` or `hidden` (+ `lm_head_weight`)")
        if labels is None:
            raise ValueError(f"{where}: `labels` is required ([B, T], HF convention, {self.ignore_index} ignored)")
        if labels.dim() != 2:
            raise ValueError(f"{where}: labels must be [B, T], got shape {tuple(labels.shape)}")
        if labels.dtype.is_floating_point:
            raise ValueError(f"{where}: labels must be integer token ids, got dtype {labels.dtype}")
        if logits is not None:
            if logits.dim() != 3 or logits.shape[:2] != labels.shape:
                raise ValueError(
                    f"{where}: logits must be [B, T, V] with [B, T] == labels.shape {tuple(labels.shape)}, "
                    f"got {tuple(logits.shape)}"
                )
            src, V = logits, logits.shape[-1]
            if weight is not None or bias is not None:
                raise ValueError(f"{where}: lm_head_weight/lm_head_bias go with `hidden`, not with `logits`")
        else:
            if weight is None:
                raise ValueError(f"{where}: `hidden` needs `lm_head_weight` ([V, H])")
            if hidden.dim() != 3 or hidden.shape[:2] != labels.shape:
                raise ValueError(
                    f"{where}: hidden must be [B, T, H] with [B, T] == labels.shape {tuple(labels.shape)}, "
                    f"got {tuple(hidden.shape)}"
                )
            if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
                raise ValueError(
                    f"{where}: lm_head_weight must be [V, H] with H == hidden.shape[-1] == {hidden.shape[-1]}, "
                    f"got {tuple(weight.shape)}"
                )
            if bias is not None and bias.shape != (weight.shape[0],):
                raise ValueError(f"{where}: lm_head_bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
            src, V = hidden, weight.shape[0]
        if not src.dtype.is_floating_point:
            raise ValueError(f"{where}: logits/hidden must be floating point, got {src.dtype}")
        for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if t is not None and t.shape != labels.shape:
                raise ValueError(f"{where}: {name} must have the shape of labels {tuple(labels.shape)}, got {tuple(t.shape)}")
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= V))
        if bad.any():
            b, t = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{where}: labels[{b}, {t}] = {int(labels[b, t])} is outside [0, {V}) and is not "
                f"ignore_index ({self.ignore_index})"
            )
        if input_ids is not None:
            mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            bad = mask & ((input_ids < 0) | (input_ids >= V))
            if bad.any():
                b, t = (int(i) for i in bad.nonzero()[0])
                raise ValueError(f"{where}: input_ids[{b}, {t}] = {int(input_ids[b, t])} is outside [0, {V})")
        if input_ids is None:
            for reg in self.regularizers:
                if any(k in ("copy", "unlikelihood") or k.startswith("ct@") for k in reg.requires()):
                    raise ValueError(f"{where}: {type(reg).__name__} needs `input_ids` (the tokens it penalises "
                                     "copying are read from them)")
        return src, weight, bias, V


class _Plan:
    """One call's state: rows, chunking, the kernel loop, and the results."""

    def __init__(self, owner, src, weight, bias, V, labels, input_ids, attention_mask, num_tokens, include_ce):
        self.owner = owner
        self.src, self.weight, self.bias, self.V = src, weight, bias, V
        self.hidden_path = weight is not None
        B, T = labels.shape
        self.B, self.T = B, T
        gold = labels[:, 1:]
        valid = gold != owner.ignore_index
        self.batch_idx, self.time_idx = valid.nonzero(as_tuple=True)
        self.gold = gold[self.batch_idx, self.time_idx].to(torch.int64)
        self.flat_idx = self.batch_idx * T + self.time_idx
        self.count = int(self.flat_idx.numel())
        self.include_ce = include_ce
        self.cdtype = torch.float64 if src.dtype == torch.float64 or (weight is not None and weight.dtype == torch.float64) else torch.float32

        active = [(name, reg) for name, reg in zip(owner.term_names, owner.regularizers, strict=False)]
        self.active = active
        needed: set[str] = set()
        for _, reg in active:
            needed |= reg.requires()
        self.top_ks = sorted({min(k, V) for k in [owner.stats_top_k] + [int(key[5:]) for key in needed if key.startswith("tail@")]})
        self.reg_tail_key = {f"tail@{int(key[5:])}": f"tail@{min(int(key[5:]), V)}" for key in needed if key.startswith("tail@")}
        self.want = {k for k in needed if not k.startswith(("tail@", "ct@"))}
        # Contrastive-token negatives: the attended inputs (or the response's) within each term's window.
        self.negatives = {}
        for key in sorted(k for k in needed if k.startswith("ct@")):
            window, context = parse_contrastive_key(key)
            self.negatives[key] = CopySetIndex(input_ids, attention_mask, labels, owner.ignore_index, context, window)
        self.copy_index = None
        if input_ids is not None:
            self.want.add("copy")  # logged even when no regularizer uses it
            self.copy_index = CopySetIndex(input_ids, attention_mask, labels, owner.ignore_index, owner.copy_context, owner.copy_window)
        if num_tokens is None:
            denom = float(max(self.count, 1))
        else:
            denom = float(num_tokens)
            if not math.isfinite(denom) or denom <= 0:
                raise ValueError(f"EntropyRegularizedLoss: num_tokens must be a finite number > 0, got {num_tokens!r}")
        self.denom = denom
        self.scale = owner.scale  # validated when set
        for reg in owner.regularizers:
            reg.check_vocab(V)
        row_bytes = 4 * V
        small_batch_rows = max(_MIN_CHUNK_BYTES // row_bytes, -(-self.count // 8))
        chunk = owner.chunk_size or max(1, min(_CHUNK_BYTES // row_bytes, small_batch_rows))
        self.chunk = chunk
        self.sums: dict[str, Tensor] = {}

    # -- the pass ------------------------------------------------------------------------------------
    def run(self, want_grad: bool):
        src, V = self.src, self.V
        dev = src.device
        if self.hidden_path:
            rows_src = src.reshape(-1, src.shape[-1]).index_select(0, self.flat_idx)
            w = self.weight.to(self.cdtype)
            b = None if self.bias is None else self.bias.to(self.cdtype)
            grad_rows = torch.zeros(self.count, src.shape[-1], dtype=self.cdtype, device=dev) if want_grad else None
            grad_w = torch.zeros_like(w) if want_grad else None
            grad_b = torch.zeros_like(b) if (want_grad and b is not None) else None
        else:
            flat = src.reshape(-1, V)
            grad_flat = torch.empty_like(flat) if want_grad else None

        total = torch.zeros((), dtype=torch.float64, device=dev)
        sums: dict[str, Tensor] = {}
        # The two [chunk, V] buffers of the pass, allocated once: logits (overwritten by the gradient)
        # and exp(z - max).
        rows_per_chunk = min(self.chunk, max(self.count, 1))
        z_buf = torch.empty(rows_per_chunk, V, dtype=self.cdtype, device=dev)
        e_buf = torch.empty_like(z_buf)
        for start in range(0, self.count, self.chunk):
            sl = slice(start, min(start + self.chunk, self.count))
            idx = self.flat_idx[sl]
            z = z_buf[: idx.numel()]
            if self.hidden_path:
                h = rows_src[sl].to(self.cdtype)
                if b is not None:
                    torch.addmm(b, h, w.t(), out=z)
                else:
                    torch.mm(h, w.t(), out=z)
            else:
                # Row gathers as slice copies of contiguous runs: index_select into a buffer is
                # an order of magnitude slower on CPU, and valid rows come in long runs anyway.
                for dst, src_row, n in _contiguous_runs(idx, start):
                    z[dst - start : dst - start + n].copy_(flat[src_row : src_row + n])
            rows = ChunkRows(self.batch_idx[sl], self.time_idx[sl], self.gold[sl])
            stats, saved = chunk_stats(
                z, rows, self.top_ks, self.copy_index, self.want, self._ul_eps(), e_out=e_buf[: idx.numel()],
                negatives=self.negatives,
            )
            self._check_finite(stats, rows)
            chunk_total, grads, penalties = self._objective(stats, want_grad)
            total += chunk_total.detach().to(torch.float64)
            self._accumulate(sums, stats, penalties, chunk_total)
            if want_grad:
                dz = chunk_grad_(z, stats, saved, grads, self.top_ks, rows.gold) if grads else z.zero_()
                if self.hidden_path:
                    torch.mm(dz, w, out=grad_rows[sl])
                    grad_w.addmm_(dz.t(), h)
                    if grad_b is not None:
                        grad_b += dz.sum(0)
                else:
                    for dst, src_row, n in _contiguous_runs(idx, start):
                        grad_flat[src_row : src_row + n].copy_(dz[dst - start : dst - start + n])
            del saved
        del z_buf, e_buf
        self.sums = sums
        loss = total.to(self.cdtype)  # chunk totals are already divided by the normaliser
        if not want_grad:
            return loss, None
        if self.hidden_path:
            grad_src = torch.zeros(src.reshape(-1, src.shape[-1]).shape, dtype=src.dtype, device=dev)
            grad_src.index_copy_(0, self.flat_idx, grad_rows.to(src.dtype))
            grads_out = (grad_src.view_as(src), grad_w.to(self.weight.dtype), None if grad_b is None else grad_b.to(self.bias.dtype))
        else:
            # Rows that were never visited (ignored labels, last position) have zero gradient.
            visited = torch.zeros(flat.shape[0], dtype=torch.bool, device=dev)
            visited[self.flat_idx] = True
            unvisited = (~visited).nonzero().view(-1)
            for _, src_row, n in _contiguous_runs(unvisited, 0):
                grad_flat[src_row : src_row + n].zero_()
            grads_out = (grad_flat.view_as(src), None, None)
        return loss, grads_out

    def _ul_eps(self) -> float:
        eps = [reg.eps for _, reg in self.active if getattr(reg, "mode", None) == "unlikelihood"]
        return min(eps) if eps else 1e-6

    def _objective(self, stats: dict[str, Tensor], want_grad: bool):
        """Chunk's summed objective (/ denom), upstream weights per stat, and per-term penalties."""
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(want_grad) for k, v in stats.items()}
            view = dict(leaves)
            for reg_key, actual in self.reg_tail_key.items():
                view[reg_key] = leaves[actual]
            total = leaves["ce"].sum() if self.include_ce else torch.zeros((), dtype=self.cdtype, device=leaves["ce"].device)
            penalties = {}
            for name, reg in self.active:
                pen = reg.penalty(view)
                penalties[name] = pen.detach()
                if reg.weight > 0 and self.scale > 0:
                    total = total + (self.scale * reg.weight) * pen.sum()
            total = total / self.denom
            grads: dict[str, Tensor] = {}
            if want_grad and total.requires_grad:
                keys = list(leaves)
                for k, g in zip(keys, torch.autograd.grad(total, [leaves[k] for k in keys], allow_unused=True), strict=False):
                    if g is not None:
                        grads[k] = g
        return total.detach(), grads, penalties

    def _check_finite(self, stats: dict[str, Tensor], rows: ChunkRows) -> None:
        bad = ~(torch.isfinite(stats["ce"]) & torch.isfinite(stats["entropy"]))
        if bad.any():
            r = int(bad.nonzero()[0])
            raise FloatingPointError(
                f"EntropyRegularizedLoss: non-finite cross-entropy or entropy (logits too large for "
                f"{self.cdtype}?) in the row predicting batch {int(rows.batch_idx[r])}, position {int(rows.time_idx[r]) + 1}"
            )

    def _accumulate(self, sums, stats, penalties, chunk_total) -> None:
        def add(key, value):
            value = value.detach().to(torch.float64)
            sums[key] = sums[key] + value if key in sums else value

        add("loss", chunk_total * self.denom)
        add("ce", stats["ce"].sum())
        add("entropy", stats["entropy"].sum())
        add("tail_mass", stats[f"tail@{min(self.owner.stats_top_k, self.V)}"].sum())
        if "copy" in stats:
            add("copy_mass", stats["copy"].sum())
        for name, pen in penalties.items():
            add(name, pen.sum())

    # -- results -----------------------------------------------------------------------------------
    def output(self, loss: Tensor) -> LossOutput:
        dev = loss.device
        keys = ["loss", "ce", "entropy", "tail_mass"] + (["copy_mass"] if self.copy_index is not None else []) + [n for n, _ in self.active]
        sums = {k: self.sums.get(k, torch.zeros((), dtype=torch.float64, device=dev)) for k in keys}
        n = max(self.count, 1)
        metrics = {k: (v / n).to(torch.float32) for k, v in sums.items()}
        return LossOutput(loss=loss, metrics=metrics, sums=sums, count=torch.tensor(self.count, dtype=torch.int64, device=dev))


def _contiguous_runs(idx: Tensor, offset: int) -> list[tuple[int, int, int]]:
    """Split sorted row indices into runs of consecutive rows.

    Returns:
        ``(position_in_idx + offset, first_row, length)`` per run.
    """
    if idx.numel() == 0:
        return []
    breaks = (idx[1:] - idx[:-1] != 1).nonzero().view(-1) + 1
    starts = [0] + breaks.tolist()
    ends = breaks.tolist() + [idx.numel()]
    first_rows = idx[starts].tolist()
    return [(offset + a, r, b - a) for a, b, r in zip(starts, ends, first_rows, strict=False)]


class _OnePassFunction(torch.autograd.Function):
    """Forward runs the pass and computes the gradient; backward scales it by the upstream scalar."""

    @staticmethod
    def forward(ctx, src, weight, bias, plan: _Plan):
        loss, grads = plan.run(want_grad=True)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
        ctx.has = tuple(g is not None for g in grads)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        # The usual upstream gradient is exactly 1 (loss.backward()): hand the buffers over as they
        # are instead of allocating another [tokens, V] tensor.
        unit = bool((grad_out == 1).all())
        out = []
        for g, has in zip(saved, ctx.has, strict=False):
            out.append((g if unit else g * grad_out.to(g.dtype)) if has else None)
        return out[0], out[1], out[2], None
