"""The one-pass kernel: per-token statistics and their closed-form vocabulary gradient, chunk by chunk.

For a chunk of rows with float32 (or float64) logits z ``[R, V]``, label y, p = softmax(z),
lse = logsumexp(z), mu = sum_j p_j z_j, the statistics (all ``[R]``) are

    ce          = lse - z_y
    entropy     = lse - mu                         (nats)
    tail@k      = 1 - sum_{j in topk(z)} p_j
    copy        = sum_{c in C} p_c                 (C: copy set of the row, see copyset.py)
    unlikelihood= sum_{c in C} -log(max(1 - p_c, eps))
    smooth      = lse - mean_j z_j                 (CE against the uniform distribution)
    ct@W        = log(1 + sum_{n in N} exp(z_n - z_y))   (contrastive token; N: the row's negatives
                  from the last W inputs, see ContrastiveToken; log-sum-exp over {y} u N minus z_y)

Given upstream weights g_* = dLoss/dstat (from autograd on the tiny stat vectors), the gradient is

    dz = p * (alpha + beta * z) + gamma - g_ce e_y - sum_k g_tk p 1[topk] + g_c p 1[C] + g_ul q 1[C]
    alpha = g_ce + g_H mu + sum_k g_tk (1 - tau_k) - g_c c - g_ul s_ul + g_s,  beta = -g_H,
    gamma = -g_s / V,  q_c = p_c / (1 - p_c),  s_ul = sum_{c in C} q_c

(uses z - mu, never log p, so p underflowing to 0 cannot create 0 * -inf). One dense exp and one
multiply-add over the chunk, plus sparse scatters into k + |C| + 1 columns; the top-k set is held fixed.
The contrastive term is sparse only: with ``s_n = exp(z_n - z_y - ct)`` (its softmax weight of n),
``dct/dz_n = s_n`` for n in N and ``dct/dz_y = -sum_n s_n``; it reads [R, |N|] gathered logits, never p.

Masked logits (``-inf``: padding rows of an LM head, constrained tokens, a ``-inf`` bias) are tokens of
probability 0: they add nothing to any statistic, get gradient 0, and the uniform distribution of
``smooth`` spans only the unmasked tokens (so every value equals the one computed with the masked
columns dropped). No extra pass finds them: ``0 * -inf`` makes the row's dot product ``e . z`` NaN, and
only rows whose dot product is not finite are inspected and recomputed (:func:`_masked_rows`). A row
is an error (``FloatingPointError`` naming it) when it holds NaN or ``+inf``, when every logit is
``-inf``, or when the gold token's logit is ``-inf`` (its cross-entropy is infinite).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .copyset import CopySetIndex

STAT_KEYS = ("ce", "entropy", "tail", "copy", "unlikelihood", "smooth")


@dataclass
class ChunkRows:
    """Where a chunk's rows come from: sequence, position and gold label of each row (all ``[R]``)."""

    batch_idx: Tensor
    time_idx: Tensor
    gold: Tensor


@dataclass
class MaskedRows:
    """Rows of a chunk that hold ``-inf`` logits: their indices ``[M]``; with ``smooth`` wanted also
    the ``-inf`` mask ``[M, V]`` and the sum ``[M]`` and number ``[M]`` of the finite logits."""

    idx: Tensor
    neg_inf: Tensor | None = None
    finite_sum: Tensor | None = None
    n_finite: Tensor | None = None

    def of(self, t: Tensor) -> Tensor:
        """The masked rows of ``t``: ``t`` itself (no copy) when every row of the chunk is masked, as
        with a vocabulary mask shared by all rows."""
        return t if self.idx.numel() == t.shape[0] else t[self.idx]


def _row_name(rows: ChunkRows, r: int) -> str:
    return f"the row predicting batch {int(rows.batch_idx[r])}, position {int(rows.time_idx[r]) + 1}"


def _masked_rows(z: Tensor, m: Tensor, ez: Tensor, z_y: Tensor, rows: ChunkRows) -> MaskedRows | None:
    """The rows with masked logits (module docstring), or FloatingPointError naming an invalid row.

    Cheap on purpose: the checks read ``[R]`` vectors only. ``topk`` ranks NaN above +inf, so a row
    holding NaN or +inf has a non-finite max ``m`` (NaN / +inf), and a row of only -inf has ``m = -inf``.
    """
    idx = (~torch.isfinite(ez)).nonzero().view(-1)
    if idx.numel() == 0:
        return None
    bad_max = ~torch.isfinite(m[idx])
    if bool(bad_max.any()):
        r = int(idx[int(bad_max.nonzero()[0])])
        if bool(torch.isneginf(m[r])):
            raise FloatingPointError(
                f"EntropyRegularizedLoss: every logit is -inf in {_row_name(rows, r)}: no token has probability > 0"
            )
        col = int((torch.isnan(z[r]) | torch.isposinf(z[r])).nonzero()[0])
        raise FloatingPointError(
            f"EntropyRegularizedLoss: logit {float(z[r, col])} (token {col}) in {_row_name(rows, r)}: "
            "logits may be -inf (probability 0) but not NaN or +inf"
        )
    gold_masked = torch.isneginf(z_y[idx])
    if bool(gold_masked.any()):
        r = int(idx[int(gold_masked.nonzero()[0])])
        raise FloatingPointError(
            f"EntropyRegularizedLoss: the gold token {int(rows.gold[r])} has logit -inf (probability 0, "
            f"infinite cross-entropy) in {_row_name(rows, r)}; check the vocabulary mask or the labels"
        )
    return MaskedRows(idx)


def chunk_stats(
    z: Tensor,
    rows: ChunkRows,
    top_ks: list[int],
    copy_index: CopySetIndex | None,
    want: set[str],
    ul_eps: float,
    e_out: Tensor | None = None,
    negatives: dict[str, CopySetIndex] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Statistics of one chunk, plus what the gradient step needs.

    Args:
        z: ``[R, V]`` logits in the compute dtype. It is not modified here.
        rows: the rows' origins and gold labels.
        top_ks: the k values whose tail mass is wanted (already clamped to V, deduplicated, sorted).
        copy_index: the copy-set index, or None when input_ids were not given.
        want: which of "copy", "unlikelihood", "smooth" to compute (ce/entropy/tail are always computed).
        ul_eps: clamp of 1 - p in the unlikelihood.
        e_out: optional preallocated ``[R, V]`` buffer for exp(z - max) (reused across chunks so that
            the pass does not page-fault fresh memory every chunk).
        negatives: ``{"ct@W": index}``: the contrastive-token terms wanted, each with the index of its
            negatives (a copy-set index over all attended inputs within its window).

    Returns:
        ``(stats, saved)``: stats maps "ce", "entropy", "tail@k", and the wanted extras to ``[R]``;
        saved holds the tensors the gradient needs (the exp buffer e, its row sums, top-k indices, ...).
    """
    R, V = z.shape
    kmax = max(top_ks)
    # Top-k on the logits has the same order as on p, and its first value is the row max we need
    # for a stable exp anyway, so this replaces the max pass.
    top_vals, top_idx = torch.topk(z, kmax, dim=1, sorted=True)
    m = top_vals[:, 0]
    e = torch.sub(z, m[:, None], out=e_out) if e_out is not None else torch.sub(z, m[:, None])
    e.exp_()
    s = e.sum(dim=1)
    lse = m + s.log()
    # sum_j e_j z_j as a batched dot product: no [R, V] temporary.
    ez = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(R)
    gold = rows.gold
    z_y = z.gather(1, gold[:, None]).view(R)
    masked = _masked_rows(z, m, ez, z_y, rows)
    if masked is not None:
        # -inf -> 0 in a copy of those rows: e is 0 there, so each masked token adds 0 * 0 to the dot.
        finite = torch.nan_to_num(masked.of(z), neginf=0.0)
        ez[masked.idx] = torch.bmm(masked.of(e).unsqueeze(1), finite.unsqueeze(2)).view(-1)
        if "smooth" in want:
            masked.neg_inf = torch.isneginf(masked.of(z))
            masked.finite_sum = finite.sum(dim=1)
            masked.n_finite = (z.shape[1] - masked.neg_inf.sum(dim=1)).to(z.dtype)
    mu = ez / s
    stats: dict[str, Tensor] = {"ce": lse - z_y, "entropy": lse - mu}
    p_top = torch.exp(top_vals - lse[:, None])
    head = p_top.cumsum(dim=1)
    for k in top_ks:
        # k == V: the tail is empty; say 0 exactly rather than 1 - (a sum that rounds to 1 - 3e-8).
        stats[f"tail@{k}"] = torch.zeros_like(m) if k >= V else (1.0 - head[:, k - 1]).clamp_min(0.0)
    saved: dict = {"e": e, "s": s, "mu": mu, "top_idx": top_idx, "p_top": p_top, "masked": masked}

    if copy_index is not None and ({"copy", "unlikelihood"} & want):
        cand, mask = copy_index.rows(rows.batch_idx, rows.time_idx, gold)
        cand = torch.where(mask, cand, torch.zeros_like(cand))  # masked slots may hold any id (padding)
        p_c = e.gather(1, cand) / s[:, None] * mask
        saved.update(cand=cand, mask=mask, p_c=p_c)
        if "copy" in want:
            stats["copy"] = p_c.sum(dim=1)
        if "unlikelihood" in want:
            one_minus = 1.0 - p_c
            unclamped = mask & (one_minus > ul_eps)
            stats["unlikelihood"] = (-torch.log(one_minus.clamp_min(ul_eps)) * mask).sum(dim=1)
            saved.update(q=torch.where(unclamped, p_c / one_minus.clamp_min(ul_eps), torch.zeros_like(p_c)))
    for key, index in (negatives or {}).items():
        cand, mask = index.rows(rows.batch_idx, rows.time_idx, gold)
        cand = torch.where(mask, cand, torch.zeros_like(cand))
        margin = (z.gather(1, cand) - z_y[:, None]).masked_fill(~mask, float("-inf"))
        # log(1 + sum exp(margin)) as a log-sum-exp with the label's own 0 margin: stable for any margin.
        ct = torch.logsumexp(torch.cat([torch.zeros_like(z_y)[:, None], margin], dim=1), dim=1)
        stats[key] = ct
        saved[key] = (cand, torch.exp(margin - ct[:, None]))  # s_n; 0 on masked slots
    if "smooth" in want:
        smooth = lse - z.mean(dim=1)
        if masked is not None:
            # Uniform over the unmasked tokens: mean of the finite logits.
            smooth[masked.idx] = lse[masked.idx] - masked.finite_sum / masked.n_finite
        stats["smooth"] = smooth
    return stats, saved


def chunk_grad_(
    z: Tensor,
    stats: dict[str, Tensor],
    saved: dict[str, Tensor],
    grads: dict[str, Tensor],
    top_ks: list[int],
    gold: Tensor,
) -> Tensor:
    """Write dLoss/dz of the chunk into ``z`` (in place) and return it.

    Args:
        z: ``[R, V]`` logits of the chunk, owned by the caller (overwritten).
        stats, saved: from ``chunk_stats``.
        grads: upstream weights ``[R]`` per stat key (missing keys mean 0).
        top_ks: as given to ``chunk_stats``.
        gold: ``[R]`` gold labels.

    Returns:
        ``z``, now holding ``[R, V]`` gradient.
    """
    R, V = z.shape
    e, s, mu = saved["e"], saved["s"], saved["mu"]
    zero = torch.zeros_like(s)
    g_ce = grads.get("ce", zero)
    g_h = grads.get("entropy", zero)
    alpha = g_ce + g_h * mu
    for k in top_ks:
        g_t = grads.get(f"tail@{k}")
        if g_t is not None:
            alpha = alpha + g_t * (1.0 - stats[f"tail@{k}"])
    g_c = grads.get("copy")
    if g_c is not None:
        alpha = alpha - g_c * stats["copy"]
    g_ul = grads.get("unlikelihood")
    if g_ul is not None:
        alpha = alpha - g_ul * saved["q"].sum(dim=1)
    g_s = grads.get("smooth")
    if g_s is not None:
        alpha = alpha + g_s

    inv_s = 1.0 / s
    # dz = p * (alpha + beta * z) with p = e / s, computed in place over the chunk.
    if "entropy" in grads:
        z.mul_((-g_h * inv_s)[:, None]).add_((alpha * inv_s)[:, None]).mul_(e)
    else:
        torch.mul(e, (alpha * inv_s)[:, None], out=z)
    if g_s is not None:
        z.sub_((g_s / V)[:, None])
    masked = saved.get("masked")
    if masked is not None:
        # A masked column's gradient is 0. Smooth's uniform part spans the unmasked tokens (-g_s /
        # n_finite, not / V), so with it the mask is applied; without it a masked column holds 0 * inf
        # = NaN (entropy term) or exactly 0, and only there (the rows passed _masked_rows).
        dz = masked.of(z)
        if g_s is not None:
            dz += (g_s[masked.idx] / V - g_s[masked.idx] / masked.n_finite)[:, None]
            dz.masked_fill_(masked.neg_inf, 0.0)
        else:
            torch.nan_to_num_(dz, nan=0.0)
        if dz is not z:
            z[masked.idx] = dz

    # Sparse parts.
    z.scatter_add_(1, gold[:, None], -g_ce[:, None])
    tail_grads = [(k, grads[f"tail@{k}"]) for k in top_ks if f"tail@{k}" in grads]
    if tail_grads:
        kmax = max(k for k, _ in tail_grads)
        rank = torch.arange(kmax, device=z.device)
        w = torch.zeros(R, kmax, dtype=z.dtype, device=z.device)
        for k, g_t in tail_grads:
            w += g_t[:, None] * (rank[None, :] < k)
        z.scatter_add_(1, saved["top_idx"][:, :kmax], -w * saved["p_top"][:, :kmax])
    if g_c is not None or g_ul is not None:
        sparse = torch.zeros_like(saved["p_c"])
        if g_c is not None:
            sparse += g_c[:, None] * saved["p_c"]
        if g_ul is not None:
            sparse += g_ul[:, None] * saved["q"]
        z.scatter_add_(1, saved["cand"], sparse)
    for key, g_ct in grads.items():
        if key.startswith("ct@"):
            cand, weights = saved[key]
            weights = g_ct[:, None] * weights
            z.scatter_add_(1, cand, weights)
            z.scatter_add_(1, gold[:, None], -weights.sum(dim=1, keepdim=True))
    return z
