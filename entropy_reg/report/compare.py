"""``compare_models``: evaluate a baseline and a candidate on identical inputs and pair the results.

Steps (all inputs are validated before the first model loads, so bad options fail fast):

1. load both models (``.ckpt`` / HF dir / ``.gguf`` / ``"tiny"`` / ``"embedded:..."``), and the
   optional reference (e.g. the model before fine-tuning), and check that their tokenizers agree
   (:mod:`entropy_reg.report.loading`);
2. for each model, :func:`entropy_reg.report.evaluate.measure_model` (the per-model step of
   ``entropy-reg eval``): generation on the same formatted prompts with the same decodings and seeds
   (:mod:`.generate`), teacher-forced perplexity, rep/l, wrep/l on held-out text and the DITTO probe
   (:mod:`.heldout`);
3. metric rows with paired bootstrap CIs (:func:`.rows.report_rows`): candidate - baseline, and with
   a reference also baseline - reference and candidate - reference, all on the same resamples.

A reference costs one more model's generation, held-out pass and probe, nothing else.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from entropy_reg.metrics import CollapseThresholds, average_probe_results
from entropy_reg.report.bootstrap import DEFAULT_RESAMPLES
from entropy_reg.report.evaluate import measure_model, parse_decodings, prepare_inputs
from entropy_reg.report.generate import Runs
from entropy_reg.report.heldout import HeldoutStats
from entropy_reg.report.loading import check_model_path, check_same_tokenizer, load_one
from entropy_reg.report.prompts import check_context, load_heldout, load_prompts
from entropy_reg.report.rows import REFERENCE, Row, report_rows
from entropy_reg.report.settings import POSITIVE_SETTINGS, MeasureSettings, check_settings

__all__ = ["CompareConfig", "Comparison", "compare_models", "parse_decodings"]


@dataclass(kw_only=True)
class CompareConfig(MeasureSettings):
    """Options of ``entropy-reg compare``: the models, the bootstrap, and each model's measurement settings
    (:class:`~entropy_reg.report.settings.MeasureSettings`, the same as ``entropy-reg eval``'s)."""

    baseline: str
    candidate: str
    reference: str | None = None
    decodings: list[str] = field(default_factory=lambda: ["greedy", "top_p"])
    n_bootstrap: int = DEFAULT_RESAMPLES
    bootstrap_seed: int = 0

    def validate(self) -> None:
        check_settings(self, POSITIVE_SETTINGS + ("n_bootstrap",))


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

    # The per-model step of `entropy-reg eval`, for each role on the same inputs (baseline's tokenizer).
    inputs = prepare_inputs(tokenizer, prompts, heldout_texts, config.max_length, config.probe_sentences)
    check_context(inputs.prompt_ids, prompts, config.max_new_tokens, {role: m for role, (m, _) in models.items()})
    results = {role: measure_model(m, tok, inputs, decodings, config, label=role, desc="compare: generating")
               for role, (m, tok) in models.items()}
    for step in ("generate", "heldout_and_probe"):
        timings[step] = sum(r.timings[step] for r in results.values())
    runs = {d.name: {role: r.runs[d.name] for role, r in results.items()} for d in decodings}
    heldout = {role: r.heldout for role, r in results.items()}
    probes = {role: r.probes for role, r in results.items()}

    t0 = time.perf_counter()
    rows, per_sample = report_rows(runs, heldout, probes, thresholds or CollapseThresholds(), config.n_bootstrap,
                                   config.bootstrap_seed)
    timings["metrics_and_bootstrap"] = time.perf_counter() - t0
    probe_avg = {role: average_probe_results(p) for role, p in probes.items() if p}
    return Comparison(config, prompts, rows, runs, per_sample, probe_avg, heldout, timings, tokenizer)
