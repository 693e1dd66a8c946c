"""``compare_models``: evaluate a baseline and a candidate on identical inputs and pair the results.

Steps (all inputs are validated before the first model loads, so bad options fail fast):

1. load both models (``.ckpt`` / HF dir / ``.gguf`` / ``"tiny"`` / ``"embedded:..."``), and the
   optional reference (e.g. the model before fine-tuning), and check that their tokenizers agree
   (:mod:`entropy_reg.report.loading`);
2. generate on the same formatted prompts with the same decodings and seeds (:mod:`.generate`);
3. teacher-forced perplexity, rep/l, wrep/l on held-out text and the DITTO probe (:mod:`.heldout`);
4. metric rows with paired bootstrap CIs (:mod:`.rows`): candidate - baseline, and with a reference
   also baseline - reference and candidate - reference, all on the same resamples.

A reference costs one more model's generation, held-out pass and probe, nothing else.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from entropy_reg.generation import DecodingConfig, parse_decoding
from entropy_reg.metrics import CollapseThresholds, average_probe_results
from entropy_reg.report.bootstrap import DEFAULT_RESAMPLES
from entropy_reg.report.generate import Runs, generate_all
from entropy_reg.report.heldout import HeldoutStats, encode_heldout, run_probe, teacher_forced
from entropy_reg.report.loading import check_model_path, check_same_tokenizer, load_one
from entropy_reg.report.prompts import InputError, encode_prompts, load_heldout, load_prompts, probe_sentences
from entropy_reg.report.rows import REFERENCE, Row, generation_rows, heldout_rows, probe_rows


@dataclass
class CompareConfig:
    """Options of ``entropy-reg compare`` (see :mod:`entropy_reg.report.cli` for their meaning)."""

    baseline: str
    candidate: str
    reference: str | None = None
    prompts_file: str | None = None
    decodings: list[str] = field(default_factory=lambda: ["greedy", "top_p"])
    max_new_tokens: int = 128
    seeds: int = 3
    batch_size: int = 8
    heldout_file: str | None = None
    max_heldout: int | None = 128
    max_length: int = 256
    probe_repeats: int = 8
    probe_sentences: int = 8
    rep_window: int = 16
    n_bootstrap: int = DEFAULT_RESAMPLES
    bootstrap_seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        for name in ("max_new_tokens", "seeds", "batch_size", "max_length", "probe_repeats", "rep_window",
                     "n_bootstrap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.probe_sentences < 0:
            raise InputError(f"--probe-sentences must be >= 0, got {self.probe_sentences}")
        if not self.decodings:
            raise InputError("--decoding needs at least one decoding name")


@dataclass
class Comparison:
    """Everything the renderers need; ``to_json`` is what ``metrics.json`` holds."""

    config: CompareConfig
    prompts: list[str]
    rows: list[Row]
    runs: dict[str, dict[str, Runs]]
    per_sample: dict[str, Any]
    probe: dict[str, dict[str, Any]]
    heldout: dict[str, HeldoutStats]
    timings: dict[str, float]
    tokenizer: Any = None  # the (shared) tokenizer, for rendering completions; not serialised

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "prompts": self.prompts,
            "rows": [r.to_dict() for r in self.rows],
            "probe": self.probe,
            "per_sample": self.per_sample,
            "samples": {
                dec: {role: {"texts": r.texts, "num_tokens": [len(x) for x in r.token_ids], "seeds": r.seeds}
                      for role, r in by_role.items()}
                for dec, by_role in self.runs.items()
            },
            "heldout": {role: {"perplexity": s.perplexity(), "num_texts": int(s.n_tokens.size),
                               "num_tokens": int(s.n_tokens.sum())} for role, s in self.heldout.items()},
            "timings_s": self.timings,
        }


def parse_decodings(names: list[str]) -> list[DecodingConfig]:
    try:
        configs = [parse_decoding(n.strip()) for n in names if n.strip()]
    except ValueError as err:
        raise InputError(f"--decoding: {err}") from None
    if not configs:
        raise InputError("--decoding needs at least one decoding name")
    if len({c.name for c in configs}) != len(configs):
        raise InputError(f"--decoding lists a decoding twice: {names}")
    return configs


def compare_models(config: CompareConfig, thresholds: CollapseThresholds | None = None) -> Comparison:
    """Run the whole comparison (see the module docstring). Raises InputError on bad inputs."""
    config.validate()
    decodings = parse_decodings(config.decodings)
    prompts = load_prompts(config.prompts_file)
    heldout_texts = load_heldout(config.heldout_file, config.max_heldout)
    paths = {"baseline": config.baseline, "candidate": config.candidate}
    if config.reference is not None:
        paths[REFERENCE] = config.reference
    for role, path in paths.items():
        check_model_path(path, role)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    models = {role: load_one(path, role) for role, path in paths.items()}
    for role in list(paths)[1:]:
        check_same_tokenizer(models["baseline"][1], models[role][1], config.baseline, paths[role], prompts,
                             role=role)
    timings["load"] = time.perf_counter() - t0
    tokenizer = models["baseline"][1]

    t0 = time.perf_counter()
    prompt_ids = encode_prompts(tokenizer, prompts)
    runs = generate_all(models, prompt_ids, decodings, config.seeds, config.max_new_tokens, config.batch_size,
                        progress=config.progress)
    timings["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows_ids = encode_heldout(tokenizer, heldout_texts, config.max_length)
    if not rows_ids:
        raise InputError("no held-out text has at least 2 tokens; pass --heldout with real text")
    heldout = {role: teacher_forced(m, rows_ids, config.batch_size, config.rep_window)
               for role, (m, _) in models.items()}
    sentences = probe_sentences(tokenizer, heldout_texts, config.probe_sentences)
    probes = {role: run_probe(m, tokenizer, sentences, config.probe_repeats) for role, (m, _) in models.items()}
    timings["heldout_and_probe"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    thresholds = thresholds or CollapseThresholds()
    rows: list[Row] = []
    per_sample: dict[str, Any] = {}
    for i, d in enumerate(decodings):
        # One RNG stream per section, derived from the user's seed: reproducible and independent.
        section_rows, kept = generation_rows(d.name, runs[d.name], thresholds, config.n_bootstrap,
                                             config.bootstrap_seed + 101 * i)
        rows += section_rows
        per_sample[d.name] = kept
    rows += heldout_rows(heldout, config.n_bootstrap, config.bootstrap_seed + 7919)
    rows += probe_rows(probes, config.n_bootstrap, config.bootstrap_seed + 104729)
    per_sample["heldout"] = {role: {"ce_sum": s.ce_sum.tolist(), "n_tokens": s.n_tokens.tolist(),
                                    "rep_hits": s.rep_hits.tolist(), "wrep_hits": s.wrep_hits.tolist()}
                             for role, s in heldout.items()}
    per_sample["probe"] = {role: [{k: r[k] for k in ("tp", "ip", "wr")} for r in p] for role, p in probes.items()}
    timings["metrics_and_bootstrap"] = time.perf_counter() - t0
    probe_avg = {role: average_probe_results(p) for role, p in probes.items() if p}
    return Comparison(config, prompts, rows, runs, per_sample, probe_avg, heldout, timings, tokenizer)
