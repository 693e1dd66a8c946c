"""Generation for both models on identical prompts, decodings and seeds, behind one tqdm bar.

Prompts are sorted by token length and cut into batches *here* (not inside ``generate_with_entropy``)
so that the progress bar moves per batch. Each batch call gets the seed ``seed * 1_000_003 + batch``:
both models see the same seed for the same prompts, and different batches do not replay the same
random stream. Greedy decoding is deterministic, so it runs with one seed only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from entropy_reg.generation import DecodingConfig, generate_with_entropy


@dataclass
class Runs:
    """Continuations of one model under one decoding; unit ``u = p * n_seeds + s`` (p-major)."""

    decoding: DecodingConfig
    seeds: list[int]
    n_prompts: int
    max_new_tokens: int
    eos_token_ids: list[int]
    token_ids: list[list[int]] = field(default_factory=list)
    entropies: list[list[float]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    hit_eos: list[bool] = field(default_factory=list)

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def unit(self, prompt: int, seed_index: int) -> int:
        return prompt * self.n_seeds + seed_index


def seeds_for(decoding: DecodingConfig, n_seeds: int) -> list[int]:
    return list(range(n_seeds)) if decoding.do_sample else [0]


def generate_all(
    models: dict[str, tuple[Any, Any]],
    prompt_ids: list[list[int]],
    decodings: list[DecodingConfig],
    n_seeds: int,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = True,
    desc: str = "compare: generating",
) -> dict[str, dict[str, Runs]]:
    """``{decoding name: {role: Runs}}`` for every role in ``models`` (``{role: (model, tokenizer)}``).

    The bar (``desc``) counts prompts and moves once per prompt batch; its postfix names the model
    (role), decoding and seed being generated.
    """
    from tqdm.auto import tqdm

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    total = len(models) * sum(len(seeds_for(d, n_seeds)) for d in decodings) * len(prompt_ids)
    out: dict[str, dict[str, Runs]] = {d.name: {} for d in decodings}
    with tqdm(total=total, unit="prompt", desc=desc, disable=not progress) as bar:
        for role, (model, tokenizer) in models.items():
            for decoding in decodings:
                seeds = seeds_for(decoding, n_seeds)
                slots: list[Any] = [None] * (len(prompt_ids) * len(seeds))
                runs = Runs(decoding, seeds, len(prompt_ids), max_new_tokens, [])
                for si, seed in enumerate(seeds):
                    bar.set_postfix_str(f"{role} {decoding.name} seed={seed}")
                    for b, batch in enumerate(batches):
                        res = generate_with_entropy(
                            model, tokenizer, [prompt_ids[i] for i in batch], decoding,
                            max_new_tokens=max_new_tokens, batch_size=len(batch),
                            seed=seed * 1_000_003 + b,
                        )
                        runs.eos_token_ids = res.eos_token_ids
                        for k, p in enumerate(batch):
                            slots[runs.unit(p, si)] = (res.token_ids[k], res.entropies[k], res.logprobs[k],
                                                       res.texts[k], res.hit_eos[k])
                        bar.update(len(batch))
                for ids, ent, lp, text, eos in slots:
                    runs.token_ids.append(ids)
                    runs.entropies.append(ent)
                    runs.logprobs.append(lp)
                    runs.texts.append(text)
                    runs.hit_eos.append(eos)
                out[decoding.name][role] = runs
    return out
