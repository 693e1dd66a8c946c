"""GenerationEvaluator: generate on fixed prompts and measure collapse metrics, without Lightning.

Shared by the Lightning callback :class:`~entropy_reg.callbacks.GenerationEval` and the ``transformers``
callback :class:`~entropy_reg.hf.EntropyEvalCallback`, which add only when to run it and where to log.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entropy_reg.generation.decode import (
    DecodingConfig,
    GenerationResult,
    generate_with_entropy,
    parse_decoding,
)
from entropy_reg.metrics import (
    COLLAPSE_CLASSES,
    DEFAULT_LOW_ENTROPY_THRESHOLD,
    CollapseThresholds,
    collapse_class,
    distinct_n,
    entropy_summary,
    eos_rate,
    multi_sentence_probe,
    rep_n,
    seq_rep_n,
    uniq_seq,
)
from entropy_reg.validation import check_int

DEFAULT_PROMPTS: tuple[str, ...] = (
    "The history of the city begins",
    "Here is a short explanation of how a hash table works:",
    "Once upon a time, in a small village by the sea,",
    "The most important thing to remember when writing Python is",
    "Q: What does the len() function return?\nA:",
    "My favourite season of the year is",
    "To install the package, first",
    "The following list describes the main features:",
    "从前，有一个小村庄，",
    "请简单介绍一下你自己。",
    "今天的天气很好，我们",
)


def _read_prompt_file(path: Path) -> list[str]:
    """One prompt per non-empty line; ``.jsonl``: one object per line with a ``"prompt"`` key."""
    if not path.is_file():
        raise ValueError(f"prompts file {str(path)!r} does not exist")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for i, ln in enumerate(lines):
            record = json.loads(ln)
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{path}:{i + 1}: expected a JSON object with a string 'prompt'")
            prompts.append(record["prompt"])
        return prompts
    return [ln.strip() for ln in lines]


class GenerationEvaluator:
    """Generation evaluation settings and the measurement itself (no Lightning): generate from fixed prompts,
    compute repetition/entropy/collapse metrics and the optional probe.

    The Lightning :class:`~entropy_reg.callbacks.GenerationEval` and the ``transformers`` callback
    :class:`~entropy_reg.hf.EntropyEvalCallback` both run this, so both compute identical numbers. Its
    messages name ``GenerationEval``, the callback most users configure.

    Args:
        prompts: None (built-in English + Chinese prompts), a list of strings, or a path to a ``.txt``
            (one prompt per line) or ``.jsonl`` (``{"prompt": ...}`` per line) file.
        every_n_steps: run when ``trainer.global_step % every_n_steps == 0`` after an optimizer step
            (None: off).
        on_validation_end: run at the end of every validation loop (the sanity check is skipped).
        decodings: preset names / specs (see :func:`entropy_reg.generation.parse_decoding`) or configs.
        max_new_tokens: generation budget per prompt. batch_size: prompts per ``generate`` call.
        seed: sampling seed (same prompts + same seed each time, so runs are comparable over steps).
        model_attr: dotted path of the HF causal LM inside the LightningModule, if ambiguous.
        log_table: W&B only: completions table. log_histogram: W&B only: token-entropy histograms.
        probe_sentences: sentences for the DITTO self-reinforcement probe (None: no probe).
        probe_repeats: number of copies N for the probe.
        low_entropy_threshold: nats; for ``low_entropy_run``.
        collapse_thresholds: thresholds of :func:`entropy_reg.metrics.collapse_class`.
        use_chat_template: wrap each prompt as a user turn with the tokenizer's chat template.
        progress: tqdm bar over generation batches (rank 0 only).
    """

    def __init__(
        self,
        prompts: None | Sequence[str] | str | Path = None,
        every_n_steps: int | None = None,
        on_validation_end: bool = True,
        decodings: Sequence[str | DecodingConfig] = ("greedy", "top_p"),
        max_new_tokens: int = 64,
        batch_size: int = 8,
        seed: int = 0,
        model_attr: str | None = None,
        log_table: bool = True,
        log_histogram: bool = True,
        probe_sentences: Sequence[str] | None = None,
        probe_repeats: int = 8,
        low_entropy_threshold: float = DEFAULT_LOW_ENTROPY_THRESHOLD,
        collapse_thresholds: CollapseThresholds | None = None,
        use_chat_template: bool = False,
        progress: bool = True,
    ) -> None:
        if prompts is None:
            self.prompts = list(DEFAULT_PROMPTS)
        elif isinstance(prompts, str | Path):
            self.prompts = _read_prompt_file(Path(prompts))
        else:
            self.prompts = list(prompts)
        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise ValueError("GenerationEval: prompts must be a non-empty list of strings (or a file of them)")
        every_n_steps = check_int("GenerationEval", "every_n_steps", every_n_steps, 1, allow_none=True)
        if every_n_steps is None and not on_validation_end:
            raise ValueError("GenerationEval would never run: set every_n_steps or on_validation_end=True")
        if isinstance(decodings, str | DecodingConfig):
            decodings = [decodings]
        self.decodings = [parse_decoding(d) for d in decodings]  # raises ValueError on unknown names
        if not self.decodings:
            raise ValueError("GenerationEval: decodings must name at least one decoding")
        names = [d.name for d in self.decodings]
        if len(set(names)) != len(names):
            raise ValueError(f"GenerationEval: decoding names must be distinct, got {names}")
        max_new_tokens = check_int("GenerationEval", "max_new_tokens", max_new_tokens, 1)
        batch_size = check_int("GenerationEval", "batch_size", batch_size, 1)
        probe_repeats = check_int("GenerationEval", "probe_repeats", probe_repeats, 1)
        if probe_sentences is not None:
            if isinstance(probe_sentences, str) or not probe_sentences:
                raise ValueError("GenerationEval: probe_sentences must be a non-empty list of strings or None")
            probe_sentences = list(probe_sentences)
        if not low_entropy_threshold > 0:
            raise ValueError(f"GenerationEval: low_entropy_threshold must be > 0 nats, got {low_entropy_threshold}")
        self.every_n_steps = every_n_steps
        self.run_on_validation_end = on_validation_end
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.model_attr = model_attr
        self.log_table = log_table
        self.log_histogram = log_histogram
        self.probe_sentences = probe_sentences
        self.probe_repeats = probe_repeats
        self.low_entropy_threshold = low_entropy_threshold
        self.collapse_thresholds = collapse_thresholds or CollapseThresholds()
        self.use_chat_template = use_chat_template
        self.progress = progress
        self._model_name: str | None = None
        self._last_step: int | None = None

    def measure(
        self, model: Any, tokenizer: Any
    ) -> tuple[dict[str, float], dict[str, GenerationResult], dict[str, Any] | None]:
        """The evaluation without logging (shared with ``entropy_reg.hf.EntropyEvalCallback``).

        Returns:
            ``(scalars, results, probe)``: ``eval/<decoding>/<metric>`` and ``eval/probe/*`` scalars, the
            generation result per decoding, and the probe result (None without probe sentences).
        """
        prompts = self._encode_prompts(tokenizer)
        scalars: dict[str, float] = {}
        results: dict[str, GenerationResult] = {}
        for decoding in self.decodings:
            res = generate_with_entropy(
                model, tokenizer, prompts, decoding, max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size, seed=self.seed, progress=self.progress,
            )
            results[decoding.name] = res
            scalars.update({f"eval/{decoding.name}/{k}": v for k, v in self._decoding_metrics(res).items()})
        probe = self._probe(model, tokenizer) if self.probe_sentences else None
        if probe is not None:
            N = probe["n"][-1]
            scalars.update({"eval/probe/tp_1": probe["tp"][0], f"eval/probe/tp_{N}": probe["tp"][-1],
                            f"eval/probe/ip_{N}": probe["ip"][-1], f"eval/probe/wr_{N}": probe["wr"][-1]})
        return scalars, results, probe

    def _encode_prompts(self, tokenizer: Any) -> list[str] | list[list[int]]:
        if not self.use_chat_template:
            return self.prompts
        rendered = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in self.prompts
        ]
        # The template already holds any BOS it wants; do not add special tokens twice.
        return [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered]

    def _classes(self, res: GenerationResult) -> list[str]:
        return [
            collapse_class(ids, ent, logprobs=lp, thresholds=self.collapse_thresholds)
            for ids, ent, lp in zip(res.token_ids, res.entropies, res.logprobs, strict=True)
        ]

    def _decoding_metrics(self, res: GenerationResult) -> dict[str, float]:
        summary = entropy_summary(res.entropies, threshold=self.low_entropy_threshold)
        classes = self._classes(res)
        n = len(classes)
        return {
            "entropy_mean": summary["mean"],
            "entropy_p10": summary["p10"],
            "seq_rep_4": seq_rep_n(res.token_ids, 4),
            "rep_2": rep_n(res.token_ids, 2),
            "distinct_2": distinct_n(res.token_ids, 2),
            "uniq_seq": float(uniq_seq(res.token_ids)),
            "eos_rate": eos_rate(res.token_ids, res.eos_token_ids) if res.eos_token_ids else 0.0,
            **{f"{name}_frac": classes.count(name) / n for name in COLLAPSE_CLASSES},
            "low_entropy_run": summary["low_entropy_run"],
        }

    def _probe(self, model: Any, tokenizer: Any) -> dict[str, Any] | None:
        sentences = [list(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in self.probe_sentences]
        bos = getattr(tokenizer, "bos_token_id", None)
        prefix = [int(bos)] if bos is not None else None
        # Without a prefix a 1-token sentence cannot be scored; skip those instead of failing mid-training.
        usable = [s for s in sentences if len(s) >= (1 if prefix else 2)]
        if not usable:
            return None
        return multi_sentence_probe(model, usable, n_repeats=self.probe_repeats, prefix_ids=prefix)

    def wandb_extras(self, results: dict[str, GenerationResult], probe: dict[str, Any] | None,
                     step: int) -> dict[str, Any]:
        """W&B objects of one evaluation: completions table, entropy histograms, probe curve."""
        import wandb

        extras: dict[str, Any] = {}
        if self.log_table:
            rows = []
            for name, res in results.items():
                for prompt, text, ids, ent, cls in zip(res.prompts, res.texts, res.token_ids, res.entropies,
                                                       self._classes(res), strict=True):
                    rows.append([step, name, prompt, text, sum(ent) / len(ent), seq_rep_n([ids], 4), cls])
            columns = ["step", "decoding", "prompt", "completion", "mean_entropy", "seq_rep_4", "collapse_class"]
            extras["eval/completions"] = wandb.Table(columns=columns, data=rows)
        if self.log_histogram:
            for name, res in results.items():
                flat = [h for ent in res.entropies for h in ent]
                extras[f"eval/{name}/entropy_hist"] = wandb.Histogram(flat)
        if probe is not None:
            table = wandb.Table(columns=["n", "tp", "ip", "wr"],
                                data=[list(r) for r in zip(probe["n"], probe["tp"], probe["ip"], probe["wr"], strict=True)])
            extras["eval/probe/curve"] = table
            extras["eval/probe/tp_plot"] = wandb.plot.line(table, "n", "tp", title=f"TP(n) at step {step}")
        return extras
