"""Batched generation that also returns the entropy of the raw next-token distribution per token.

Why the *raw* logits: ``model.generate(..., return_dict_in_generate=True, output_logits=True)`` returns
``outputs.logits``, the model's next-token logits *before* the logits processors/warpers (repetition
penalty, temperature, top-k/top-p/min-p) — in transformers 5.x ``_sample`` appends
``next_token_logits`` to ``raw_logits`` before ``logits_processor`` runs (``outputs.scores`` would be the
processed ones). So the entropy measures the model, not the decoding recipe: it is the same for greedy
and for T=0.7 sampling given the same context.

Conventions of :class:`GenerationResult`:

- ``token_ids[i]`` is the continuation only (no prompt, no padding), cut right *after* the first EOS:
  the EOS is kept as the last token when the model stopped on its own, because the entropy at that
  position is a real decision of the model (stop or go on). ``hit_eos[i]`` says whether it did; texts
  are decoded with special tokens skipped, so the EOS is not in ``texts``.
- ``entropies[i][k]`` (nats) and ``logprobs[i][k]`` (log-probability of the chosen token under the raw
  distribution) belong to ``token_ids[i][k]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from entropy_reg.metrics.entropy import entropy_and_logsumexp
from entropy_reg.models.find import model_device


@dataclass(frozen=True)
class DecodingConfig:
    """A named decoding recipe; ``None`` / neutral values mean "that warper is off"."""

    name: str
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float | None = None
    top_k: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DecodingConfig.name must be a non-empty string")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0, got {self.temperature} (use do_sample=False for greedy)"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``. Every warper is set explicitly (neutral when off) so
        that defaults stored in a checkpoint's ``generation_config`` (e.g. top_k=50) cannot leak in."""
        kwargs: dict[str, Any] = {"do_sample": self.do_sample, "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p)
        else:  # greedy: neutral warpers, so transformers does not warn about unused sampling flags
            kwargs.update(temperature=None, top_p=None, top_k=None, min_p=None)
        return kwargs


DECODING_PRESETS: dict[str, DecodingConfig] = {
    "greedy": DecodingConfig("greedy"),
    "top_p": DecodingConfig("top_p", do_sample=True, temperature=1.0, top_p=0.9),
    "min_p": DecodingConfig("min_p", do_sample=True, temperature=1.0, min_p=0.1),
    "temperature": DecodingConfig("temperature", do_sample=True, temperature=0.7),
    "rep_penalty": DecodingConfig("rep_penalty", repetition_penalty=1.2),
}


def parse_decoding(spec: str | DecodingConfig) -> DecodingConfig:
    """A preset name, optionally with overrides: ``"top_p"``, ``"top_p:top_p=0.95,temperature=0.8"``.

    An override changes the config's name to the full spec, so logged keys stay distinct.
    """
    if isinstance(spec, DecodingConfig):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"decoding must be a preset name or DecodingConfig, got {type(spec).__name__}")
    name, _, overrides = spec.partition(":")
    if name not in DECODING_PRESETS:
        raise ValueError(f"unknown decoding preset {name!r}; choose from {sorted(DECODING_PRESETS)}")
    config = DECODING_PRESETS[name]
    if not overrides:
        return config
    types = {f.name: f.type for f in fields(DecodingConfig)}
    changes: dict[str, Any] = {}
    for item in overrides.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in types or key == "name":
            raise ValueError(
                f"bad decoding override {item!r} in {spec!r}; expected key=value with key in "
                f"{sorted(k for k in types if k != 'name')}"
            )
        try:
            if key == "do_sample":
                changes[key] = {"true": True, "false": False}[value.strip().lower()]
            elif key == "top_k":
                changes[key] = int(value)
            elif key == "min_p" and value.strip().lower() == "none":
                changes[key] = None
            else:
                changes[key] = float(value)
        except (KeyError, ValueError) as err:
            raise ValueError(f"bad value for {key!r} in decoding spec {spec!r}: {value!r}") from err
    return replace(config, name=spec.replace(":", "_").replace(",", "_").replace("=", ""), **changes)


@dataclass
class GenerationResult:
    """Outputs of :func:`generate_with_entropy`, one entry per prompt, in prompt order."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    token_ids: list[list[int]]
    entropies: list[list[float]]
    logprobs: list[list[float]]
    texts: list[str]
    hit_eos: list[bool]
    decoding: DecodingConfig | None = None
    max_new_tokens: int = 0
    eos_token_ids: list[int] = field(default_factory=list)


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


def _tokenize_prompts(tokenizer: Any, prompts: Sequence[Any]) -> tuple[list[str], list[list[int]]]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings or of token-id lists")
    if all(isinstance(p, str) for p in prompts):
        ids = [list(x) for x in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
        texts = list(prompts)
    elif all(isinstance(p, list | tuple | torch.Tensor) for p in prompts):
        ids = [[int(t) for t in (p.tolist() if isinstance(p, torch.Tensor) else p)] for p in prompts]
        texts = [tokenizer.decode(p, skip_special_tokens=True) for p in ids]
    else:
        raise ValueError("prompts must be all strings or all token-id lists, not a mix")
    bos = getattr(tokenizer, "bos_token_id", None)
    for i, p in enumerate(ids):
        if not p:
            if bos is None:
                raise ValueError(f"prompt {i} has no tokens and the tokenizer has no BOS token to start from")
            p.append(int(bos))
    return texts, ids


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Manual left padding (instead of flipping tokenizer.padding_side): it never mutates the user's
    # tokenizer, and it works for pre-tokenized prompts too. Decoder-only generation needs left padding
    # so that every row's last position is a real token.
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def generate_with_entropy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    decoding: str | DecodingConfig = "greedy",
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> GenerationResult:
    """Generate continuations in batches and capture the raw next-token entropy of every generated token.

    Args:
        model: a Hugging Face causal LM (``generate`` with KV cache).
        tokenizer: its tokenizer (used to encode string prompts and decode continuations).
        prompts: list of strings, or list of token-id lists (used as-is, no special tokens added).
        decoding: a preset name / spec (see :func:`parse_decoding`) or a :class:`DecodingConfig`.
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per ``generate`` call (prompts are grouped by length to limit padding).
        seed: sampling seed. The global RNG state is forked, so training randomness is not disturbed.
        progress: show a tqdm bar over batches.

    Returns:
        :class:`GenerationResult` (conventions in the module docstring).
    """
    config = parse_decoding(decoding)
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if tokenizer is None:
        raise ValueError("generate_with_entropy needs a tokenizer (to encode prompts and decode outputs)")
    texts, prompt_ids = _tokenize_prompts(tokenizer, prompts)
    eos_ids = _eos_ids(tokenizer, model)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad_id) if pad_id is not None else (eos_ids[0] if eos_ids else 0)
    device = model_device(model)

    from tqdm.auto import tqdm

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    out_ids: list[list[int]] = [[] for _ in prompt_ids]
    out_ent: list[list[float]] = [[] for _ in prompt_ids]
    out_lp: list[list[float]] = [[] for _ in prompt_ids]
    out_eos = [False] * len(prompt_ids)

    was_training = model.training
    model.eval()
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            for batch in tqdm(batches, desc=f"generate[{config.name}]", disable=not progress, leave=False):
                input_ids, attention_mask = _left_pad([prompt_ids[i] for i in batch], pad_id, device)
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad_id,
                    eos_token_id=eos_ids or None,
                    use_cache=True,
                    return_dict_in_generate=True,
                    output_logits=True,
                    **config.generate_kwargs(),
                )
                new_tokens = out.sequences[:, input_ids.shape[1] :]  # [b, steps]
                # One vectorised pass per step over [b, V]; stacking all steps at once would hold a
                # [b, steps, V] float32 copy (100 MB for a 49k vocab at b=8, 64 steps).
                ent_steps, lp_steps = [], []
                for k, step_logits in enumerate(out.logits):
                    h, lse = entropy_and_logsumexp(step_logits)
                    chosen = step_logits.gather(-1, new_tokens[:, k, None]).squeeze(-1).float()
                    ent_steps.append(h)
                    lp_steps.append(chosen - lse)  # log p(chosen) = z_y - logsumexp(z)
                ent = torch.stack(ent_steps, dim=1)  # [b, steps]
                lp = torch.stack(lp_steps, dim=1)
                _collect(
                    batch, new_tokens.cpu(), ent.cpu(), lp.cpu(), eos_ids, out_ids, out_ent, out_lp, out_eos
                )
    finally:
        model.train(was_training)

    return GenerationResult(
        prompts=texts,
        prompt_ids=prompt_ids,
        token_ids=out_ids,
        entropies=out_ent,
        logprobs=out_lp,
        texts=[tokenizer.decode(ids, skip_special_tokens=True) for ids in out_ids],
        hit_eos=out_eos,
        decoding=config,
        max_new_tokens=max_new_tokens,
        eos_token_ids=eos_ids,
    )


def _collect(batch, new_tokens, ent, lp, eos_ids, out_ids, out_ent, out_lp, out_eos) -> None:
    """Cut each row right after its first EOS (rows that finished early are padded by generate)."""
    is_eos = torch.zeros_like(new_tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= new_tokens == e
    for row, idx in enumerate(batch):
        hits = torch.nonzero(is_eos[row]).flatten()
        end = int(hits[0]) + 1 if hits.numel() else new_tokens.shape[1]
        out_ids[idx] = new_tokens[row, :end].tolist()
        out_ent[idx] = ent[row, :end].tolist()
        out_lp[idx] = lp[row, :end].tolist()
        out_eos[idx] = bool(hits.numel())
