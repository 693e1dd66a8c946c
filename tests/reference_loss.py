"""Plain-autograd reference of EntropyRegularizedLoss: slow, obvious, per-row Python loops.

It uses the textbook formulas (log_softmax, -(p log p), an explicit set of copied ids) so that the
fast path's closed-form gradient is checked against autograd, not against itself.

Masked logits (-inf) are *dropped*: each row is computed on its finite columns only (a vocabulary of
size V_row), with the gold id and the copied ids mapped into that smaller vocabulary and masked copied
ids left out. The gradient of a dropped column is 0 (it never enters the graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_loss(
    logits,
    labels,
    input_ids=None,
    attention_mask=None,
    regularizers=(),
    ignore_index=-100,
    stats_top_k=20,
    copy_context="all",
    copy_window=None,
    scale=1.0,
    include_ce=True,
    num_tokens=None,
):
    """Returns (loss, metrics dict of python floats)."""
    B, T, V = logits.shape
    total = logits.new_zeros(())
    sums: dict[str, float] = {}
    count = 0

    def add(key, value):
        sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)

    names = []
    for reg in regularizers:
        name, i = reg.name, 1
        while name in names:
            name, i = f"{reg.name}_{i}", i + 1
        names.append(name)

    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == ignore_index:
                continue
            count += 1
            keep = ~torch.isneginf(logits[b, t].detach())
            new_id = torch.cumsum(keep.long(), 0) - 1  # id in the row's own vocabulary of kept tokens
            z = logits[b, t][keep]
            y_kept = int(new_id[y])
            logp = F.log_softmax(z, dim=-1)
            p = logp.exp()
            stats = {"ce": -logp[y_kept], "entropy": -(p * logp).sum(), "smooth": -logp.mean()}
            ks = {min(stats_top_k, V)} | {min(r.top_k, V) for r in regularizers if hasattr(r, "top_k")}
            for k in ks:
                top = torch.topk(z.detach(), min(k, z.numel())).indices
                stats[f"tail@{k}"] = 1 - p[top].sum()
            for r in regularizers:
                if hasattr(r, "top_k"):
                    stats[f"tail@{r.top_k}"] = stats[f"tail@{min(r.top_k, V)}"]
            if input_ids is not None:
                seen = set()
                for s in range(t + 1):
                    if copy_window is not None and s <= t - copy_window:
                        continue
                    if attention_mask is not None and int(attention_mask[b, s]) == 0:
                        continue
                    if copy_context == "response" and int(labels[b, s]) == ignore_index:
                        continue
                    seen.add(int(input_ids[b, s]))
                seen.discard(y)
                idx = torch.tensor(sorted(int(new_id[c]) for c in seen if keep[c]), dtype=torch.long)
                pc = p[idx]
                eps = min([r.eps for r in regularizers if getattr(r, "mode", None) == "unlikelihood"] or [1e-6])
                stats["copy"] = pc.sum()
                stats["unlikelihood"] = (-torch.log(torch.clamp(1 - pc, min=eps))).sum()
                add("copy_mass", stats["copy"])
                for r in regularizers:
                    if r.name == "contrastive_token":  # negatives: every attended input in the window
                        negs = {int(input_ids[b, s]) for s in range(t + 1)
                                if (r.window is None or s > t - r.window)
                                and (attention_mask is None or int(attention_mask[b, s]) == 1)
                                and (r.context == "all" or int(labels[b, s]) != ignore_index)} - {y}
                        neg_idx = torch.tensor(sorted(int(new_id[c]) for c in negs if keep[c]), dtype=torch.long)
                        key = f"ct@{'all' if r.window is None else r.window}:{r.context}"
                        stats[key] = torch.log(1 + torch.exp(z[neg_idx] - z[y_kept]).sum())
            row = stats["ce"] if include_ce else logits.new_zeros(())
            for name, reg in zip(names, regularizers, strict=False):
                pen = reg.penalty(stats)
                add(name, pen)
                row = row + scale * reg.weight * pen
            add("loss", row)
            add("ce", stats["ce"])
            add("entropy", stats["entropy"])
            add("tail_mass", stats[f"tail@{min(stats_top_k, V)}"])
            total = total + row
    denom = num_tokens if num_tokens is not None else max(count, 1)
    metrics = {k: v / max(count, 1) for k, v in sums.items()}
    return total / denom, metrics, count


def assert_metrics_match(out, ref_metrics):
    """Every reference metric equals the loss output's to 1e-6 (relative above 1, absolute below)."""
    for key, value in ref_metrics.items():
        assert abs(float(out.metrics[key]) - value) <= 1e-6 * max(1.0, abs(value)), (key, float(out.metrics[key]), value)
