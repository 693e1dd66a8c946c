"""DITTO self-reinforcement probe (Xu et al. 2022): does repeating a sentence make it more likely?

Input: ``prefix_ids + sentence * N`` in ONE teacher-forced forward pass. For copy ``n`` (1-based) and
sentence token ``i``, ``P[n, i]`` is the model's probability of that token given everything before it
(the logits one position earlier, HF causal shift). Then:

- ``TP(n)`` = mean over ``i`` of ``P[n, i]`` — the "probability black hole" curve when it climbs to 1;
- ``IP(n)`` = share of ``i`` with ``P[n, i] > P[1, i]`` (strictly; so ``IP(1) = 0``);
- ``WR(n)`` = share of ``i`` where the gold token is the argmax of the distribution.

Scored tokens: every token needs a predecessor. With no prefix, the first token of copy 1 has none, so
sentence position 0 is dropped from *all* copies (copies are compared over the same token positions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from entropy_reg.metrics._inputs import as_id_list
from entropy_reg.models.find import model_device


def self_reinforcement_probe(
    model: torch.nn.Module,
    sentence_ids: Sequence[int],
    n_repeats: int = 10,
    prefix_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run the probe on one sentence.

    Args:
        model: a causal LM; ``model(input_ids=[1, L]).logits`` must be [1, L, V].
        sentence_ids: the sentence's token ids (>= 2 tokens without a prefix, >= 1 with one).
        n_repeats: N, number of copies (>= 1).
        prefix_ids: optional tokens before the first copy (e.g. ``[bos_token_id]``).

    Returns:
        ``{"n": [1..N], "tp": [N floats], "ip": [N], "wr": [N], "token_probs": [N][S'] floats}`` where S'
        is the number of scored sentence positions.
    """
    sentence = as_id_list(sentence_ids, "sentence_ids")
    prefix = as_id_list(prefix_ids, "prefix_ids") if prefix_ids is not None else []
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 1:
        raise ValueError(f"n_repeats must be a positive int, got {n_repeats!r}")
    first = 0 if prefix else 1  # first scored sentence position (see module docstring)
    if len(sentence) <= first:
        raise ValueError(
            f"sentence_ids has {len(sentence)} token(s); the probe needs >= {first + 1} "
            "(without prefix_ids the first token cannot be scored)"
        )
    S, P = len(sentence), len(prefix)
    ids = torch.tensor([prefix + sentence * n_repeats], dtype=torch.long, device=model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]  # [L, V]
    finally:
        model.train(was_training)
    # Target position of (copy n, token i) is P + n*S + i; it is predicted by logits one position earlier.
    offsets = torch.arange(first, S)
    targets = (P + torch.arange(n_repeats)[:, None] * S + offsets[None, :]).to(logits.device)  # [N, S']
    pred_rows = logits[targets - 1].float()  # [N, S', V]
    gold = ids[0][targets]  # [N, S']
    logp = torch.log_softmax(pred_rows, dim=-1).gather(-1, gold[..., None]).squeeze(-1)
    probs = logp.exp()  # [N, S']
    correct = pred_rows.argmax(dim=-1) == gold
    increased = probs > probs[:1]
    return {
        "n": list(range(1, n_repeats + 1)),
        "tp": probs.mean(dim=1).tolist(),
        "ip": increased.float().mean(dim=1).tolist(),
        "wr": correct.float().mean(dim=1).tolist(),
        "token_probs": probs.tolist(),
    }


def average_probe_results(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean of several probe results (same N) per copy index: ``{"n", "tp", "ip", "wr", "num_sentences"}``."""
    results = list(results)
    if not results:
        raise ValueError("average_probe_results got no results")
    n = list(results[0]["n"])
    if any(list(r["n"]) != n for r in results):
        raise ValueError("probe results disagree on n_repeats; cannot average")
    out: dict[str, Any] = {"n": n, "num_sentences": len(results)}
    for key in ("tp", "ip", "wr"):
        out[key] = [sum(r[key][k] for r in results) / len(results) for k in range(len(n))]
    return out


def multi_sentence_probe(
    model: torch.nn.Module,
    sentences: Sequence[Sequence[int]],
    n_repeats: int = 10,
    prefix_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run :func:`self_reinforcement_probe` on each sentence and average TP/IP/WR per copy index."""
    if isinstance(sentences, str) or not list(sentences):
        raise ValueError("multi_sentence_probe needs a non-empty list of token-id sentences")
    return average_probe_results(
        [self_reinforcement_probe(model, s, n_repeats=n_repeats, prefix_ids=prefix_ids) for s in sentences]
    )


def plot_probe(results: Mapping[str, Mapping[str, Any]], path: str | Path, metric: str = "tp") -> Path:
    """Draw ``metric``(n) (default TP, the black-hole curve) for each labelled probe result into a PNG.

    Uses the Agg canvas directly (no pyplot), so it works headless and leaves the global backend alone.

    Args:
        results: ``{label: probe result}`` (single or averaged).
        path: output image path (parent directories are created).
        metric: "tp", "ip" or "wr".
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metric not in ("tp", "ip", "wr"):
        raise ValueError(f"metric must be 'tp', 'ip' or 'wr', got {metric!r}")
    if not results:
        raise ValueError("plot_probe got no results to draw")
    titles = {"tp": "TP(n): mean prob. of the repeated sentence", "ip": "IP(n): share of tokens above copy 1",
              "wr": "WR(n): share of tokens that are the argmax"}
    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, res in results.items():
        if metric not in res or "n" not in res:
            raise ValueError(f"result {label!r} has no {metric!r}/'n' entries; pass probe outputs")
        ax.plot(res["n"], res[metric], marker="o", label=str(label))
    ax.set_xlabel("repetition n")
    ax.set_ylabel(metric.upper())
    ax.set_ylim(0.0, 1.02)
    ax.set_title(titles[metric])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
