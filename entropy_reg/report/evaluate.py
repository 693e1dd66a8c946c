"""``evaluate_model``: the measurements ``compare`` makes of each model, for ONE model.

"Is this checkpoint collapsing?" needs no baseline. :func:`evaluate_model` loads one model (any source
``compare`` takes: ``.ckpt``, HF dir, ``.gguf``, ``"tiny"``, ``"embedded:smollm2-135m-instruct"``) and
runs :func:`measure_model` — the per-model step that :func:`~entropy_reg.report.compare.compare_models`
runs for each of its roles: generation on the prompts for each decoding, teacher-forced perplexity and
rep/l on held-out text, and the DITTO self-reinforcement probe.

Point values come from compare's own row builders (:func:`entropy_reg.report.rows.report_rows`, with
the model in both roles), so every number of :meth:`ModelEvaluation.summary` equals the value the
compare report shows for the same model, inputs and :class:`~entropy_reg.metrics.CollapseThresholds`.

:meth:`ModelEvaluation.to_json` keeps the raw per-continuation generations (token ids, entropies,
log-probs), the per-text held-out sums and the per-sentence probe results, so two saved evaluations
made with the same settings can be paired later (:func:`pair_evaluations`): the rows and paired
bootstrap CIs are exactly those ``compare`` would have computed from the same inputs.

With ``EvalConfig.data_file`` (``entropy-reg eval --data FILE``) the training rows of FILE are measured
too, tokenised by the model's tokenizer as training does (:func:`data_statistics`: rows cut at
``data_max_length`` and so never ending, responses' rep-2/rep-4 and duplicate share, label tokens per
row, warnings past :data:`entropy_reg.data.statistics.THRESHOLDS`): ``data/*`` in the summary.

::

    from entropy_reg.report.evaluate import EvalConfig, evaluate_model
    ev = evaluate_model("runs/sft/last.ckpt", EvalConfig(decodings=["greedy", "top_p"]))
    ev.summary()["greedy/seq_rep_4"], ev.summary()["probe/tp_last"], ev.summary()["global_step"]
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from entropy_reg.generation import DecodingConfig, parse_decoding
from entropy_reg.metrics import COLLAPSE_CLASSES, CollapseThresholds
from entropy_reg.report.bootstrap import DEFAULT_RESAMPLES
from entropy_reg.report.generate import Runs, generate_all
from entropy_reg.report.heldout import HeldoutStats, encode_heldout, run_probe, teacher_forced
from entropy_reg.report.prompts import (
    InputError,
    check_context,
    encode_prompts,
    load_heldout,
    load_prompts,
    probe_sentences,
)
from entropy_reg.report.rows import REFERENCE, Row, report_rows
from entropy_reg.report.settings import MeasureSettings

_PROBE_KEYS = ("n", "tp", "ip", "wr")  # what is kept of each probe sentence (not the per-token probs)


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


@dataclass(kw_only=True)
class EvalConfig(MeasureSettings):
    """``entropy-reg eval``'s options: the per-model settings ``compare`` shares, plus ``--data``."""

    # ``--data``: a training data file (any SFTDataModule dataset) whose rows are measured (data_statistics)
    data_file: str | None = None
    data_max_length: int = 256  # tokens per training row, as the recipes' data.max_length

    def validate(self) -> None:
        super().validate()
        value = self.data_max_length
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise InputError(f"--data-max-length must be an integer >= 2 (tokens per training row), got {value!r}")


@dataclass
class EvalInputs:
    """What every model of an evaluation sees: prompts, held-out rows and probe sentences (token ids)."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    heldout_rows: list[list[int]]
    probe_sentences: list[list[int]]


def prepare_inputs(tokenizer: Any, prompts: list[str], heldout_texts: list[str], max_length: int,
                   n_probe_sentences: int) -> EvalInputs:
    rows = encode_heldout(tokenizer, heldout_texts, max_length)
    if not rows:
        raise InputError("no held-out text has at least 2 tokens; pass --heldout with real text")
    return EvalInputs(prompts, encode_prompts(tokenizer, prompts), rows,
                      probe_sentences(tokenizer, heldout_texts, n_probe_sentences))


@dataclass
class ModelResults:
    """Raw measurements of one model: ``{decoding: Runs}``, held-out sums, one probe result per sentence."""

    runs: dict[str, Runs]
    heldout: HeldoutStats
    probes: list[dict[str, Any]]
    timings: dict[str, float]


def measure_model(model: Any, tokenizer: Any, inputs: EvalInputs, decodings: list[DecodingConfig],
                  config: Any, label: str = "model", desc: str = "eval: generating") -> ModelResults:
    """The per-model step of ``compare`` and ``eval``: generate, teacher-force the held-out rows, probe.

    ``config`` holds the settings of :class:`EvalConfig` (``CompareConfig`` has the same names).
    Progress (``config.progress``): a bar per prompt batch named ``desc`` with ``label`` in its postfix,
    then one line before the held-out pass.
    """
    t0 = time.perf_counter()
    by_decoding = generate_all({label: (model, tokenizer)}, inputs.prompt_ids, decodings, config.seeds,
                               config.max_new_tokens, config.batch_size, progress=config.progress, desc=desc)
    t1 = time.perf_counter()
    if config.progress:
        print(f"{desc.split(':')[0]}: {label}: held-out perplexity ({len(inputs.heldout_rows)} texts) and "
              f"probe ({len(inputs.probe_sentences)} sentences) ...", file=sys.stderr, flush=True)
    heldout = teacher_forced(model, inputs.heldout_rows, config.batch_size, config.rep_window)
    probes = run_probe(model, tokenizer, inputs.probe_sentences, config.probe_repeats)
    timings = {"generate": t1 - t0, "heldout_and_probe": time.perf_counter() - t1}
    return ModelResults({name: by_role[label] for name, by_role in by_decoding.items()}, heldout, probes, timings)


def check_data_file(source: str) -> None:
    """Refuse a ``--data`` source that cannot be read (missing, unparsable, ...) before any model loads."""
    from entropy_reg.data.sources import _quiet_progress_bars, load_raw_dataset
    from entropy_reg.errors import UserError

    try:
        with _quiet_progress_bars():  # datasets' "Generating train split" bar
            load_raw_dataset(source, "train")
    except UserError as err:
        raise InputError(f"--data: {err}") from None


def data_statistics(tokenizer: Any, source: str, max_length: int) -> dict[str, Any]:
    """What the training rows of ``source`` teach about ending and repeating, tokenised as training does.

    The rows go through :class:`~entropy_reg.data.SFTDataModule` (same validation, formatting and
    truncation at ``max_length``; every row, no validation split) and
    :func:`entropy_reg.data.statistics.row_statistics`. Returns ``{"file", "max_length", "dropped_rows",
    "statistics", "warnings"}``; the warnings are those past :data:`entropy_reg.data.statistics.THRESHOLDS`,
    truncation included. The data module's own log line and warnings are silenced (the caller reports).
    """
    import logging
    import warnings

    from entropy_reg.data import SFTDataModule
    from entropy_reg.data.sources import _quiet_progress_bars
    from entropy_reg.data.statistics import warnings_for
    from entropy_reg.errors import UserError

    dm = SFTDataModule(tokenizer=tokenizer, dataset=source, val_fraction=0.0, max_length=max_length)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    disabled = log.disabled
    log.disabled = True
    try:
        with warnings.catch_warnings(), _quiet_progress_bars():
            warnings.simplefilter("ignore")
            dm.setup("fit")
    except UserError as err:
        raise InputError(f"--data: {err}") from None
    finally:
        log.disabled = disabled
    stats = dict(dm.statistics["train"])
    dropped = dm.dropped.get("train", 0)
    problems = warnings_for(stats, truncation=True)
    if dropped:
        problems.append(f"{dropped} rows have no response token within max_length={max_length} and are dropped")
    return {"file": source, "max_length": max_length, "dropped_rows": dropped, "statistics": stats,
            "warnings": problems}


def checkpoint_global_step(source: str) -> int | None:
    """``global_step`` saved in a Lightning ``.ckpt`` (mapped, not read); None for other sources."""
    if not str(source).endswith(".ckpt"):
        return None
    from entropy_reg.models.loading import read_checkpoint

    step = read_checkpoint(source, mmap=True).get("global_step")
    return None if step is None else int(step)


# ---------------------------------------------------------------------------------------------------
# the result of one model


@dataclass
class ModelEvaluation:
    """One model's measurements; :meth:`summary` the flat numbers, :meth:`to_json` what metrics.json holds."""

    source: str
    config: EvalConfig
    prompts: list[str]
    runs: dict[str, Runs]
    heldout: HeldoutStats
    probes: list[dict[str, Any]]
    global_step: int | None = None
    thresholds: CollapseThresholds = field(default_factory=CollapseThresholds)
    timings: dict[str, float] = field(default_factory=dict)
    prompt_ids: list[list[int]] | None = None
    tokenizer: Any = field(default=None, repr=False, compare=False)  # for rendering; not serialised
    data: dict[str, Any] | None = None  # data_statistics of --data (None without it)

    # -- compare's rows with this model in both roles: the point values compare reports ------------
    def _point_rows(self) -> tuple[list[Row], dict[str, Any]]:
        cached = self.__dict__.get("_rows_cache")
        if cached is None:
            both = ("baseline", "candidate")
            rows, per_sample = report_rows(
                {d: dict.fromkeys(both, r) for d, r in self.runs.items()}, dict.fromkeys(both, self.heldout),
                dict.fromkeys(both, self.probes), self.thresholds, 1, 0)
            cached = ([r for r in rows if r.key != "perplexity_ratio"],
                      {k: v["baseline"] for k, v in per_sample.items()})
            self.__dict__["_rows_cache"] = cached
        return cached

    def rows(self) -> list[Row]:
        """Every metric row of a compare report (sections, labels, variants), value in ``.baseline``.

        The CI fields are meaningless here (the model is paired with itself); use :func:`pair_evaluations`.
        """
        return self._point_rows()[0]

    def per_sample(self) -> dict[str, Any]:
        """Per-continuation values and collapse classes per decoding, held-out sums, probe per sentence."""
        return self._point_rows()[1]

    def probe_average(self) -> dict[str, Any] | None:
        """TP/IP/WR per copy averaged over sentences (the probe plot's curve), None without sentences."""
        from entropy_reg.metrics import average_probe_results

        return average_probe_results(self.probes) if self.probes else None

    def summary(self) -> dict[str, Any]:
        """Flat, JSON-able numbers: ``<decoding>/<metric>``, ``perplexity``, ``probe/tp_<n>``, source, step.

        Per decoding: ``seq_rep_4``, ``rep_2`` (pooled, percent), ``distinct_2``, ``eos_rate``,
        ``entropy_mean`` (nats), ``degenerate_share`` (low-entropy loops), ``repetitive_share``
        (high-entropy loops), ``any_loop_share`` (the two), ``divergent_share``, ``healthy_share``,
        ``low_entropy_share`` (generated tokens below 0.5 nats) — each the compare report's value.
        """
        values = {(r.section, r.key): r.baseline for r in self.rows()}
        out: dict[str, Any] = {"source": self.source, "global_step": self.global_step}
        for d in self.runs:
            for key in ("seq_rep_4", "rep_2", "distinct_2", "eos_rate", "entropy_mean"):
                out[f"{d}/{key}"] = values[(d, key)]
            for name in COLLAPSE_CLASSES:
                out[f"{d}/{name}_share"] = values[(d, f"{name}_share")]
            out[f"{d}/any_loop_share"] = out[f"{d}/degenerate_share"] + out[f"{d}/repetitive_share"]
            out[f"{d}/low_entropy_share"] = values[(d, "low_entropy_frac")]
        out["perplexity"] = self.heldout.perplexity()
        out["probe/tp_last"] = None
        if self.probes:
            n_copies = len(self.probes[0]["tp"])
            for k in range(n_copies):  # as rows.probe_rows: numpy mean over sentences
                out[f"probe/tp_{k + 1}"] = float(np.asarray([p["tp"][k] for p in self.probes]).mean())
            out["probe/tp_last"] = out[f"probe/tp_{n_copies}"]
        if self.data is not None:  # --data: the training rows' statistics (entropy_reg.data.statistics)
            out["data/file"] = self.data["file"]
            out["data/max_length"] = self.data["max_length"]
            out["data/dropped_rows"] = self.data["dropped_rows"]
            out.update({f"data/{k}": v for k, v in self.data["statistics"].items()})
        return out

    # -- serialisation ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """``summary`` first, then everything :meth:`from_json` and :func:`pair_evaluations` need."""
        return {
            "summary": self.summary(),
            "source": self.source,
            "global_step": self.global_step,
            "config": asdict(self.config),
            "thresholds": asdict(self.thresholds),
            "rows": [{k: v for k, v in r.to_dict().items() if k in ("section", "key", "label", "variant")}
                     | {"value": r.baseline} for r in self.rows()],
            "prompts": self.prompts,
            "prompt_ids": self.prompt_ids,
            "runs": {d: runs_to_json(r) for d, r in self.runs.items()},
            "per_sample": {d: {k: v for k, v in self.per_sample()[d].items()} for d in self.runs},
            "heldout": {"perplexity": self.heldout.perplexity(), "window": self.heldout.window,
                        **{name: getattr(self.heldout, name).tolist()
                           for name in ("ce_sum", "n_tokens", "rep_hits", "wrep_hits", "human_hits")}},
            "probe": self.probe_average(),
            "probe_sentences": [{k: p[k] for k in _PROBE_KEYS} for p in self.probes],
            "timings_s": self.timings,
            "data": self.data,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelEvaluation:
        """Rebuild from :meth:`to_json` (e.g. a loaded ``metrics.json``); no tokenizer."""
        known = {f.name for f in fields(EvalConfig)}
        h = data["heldout"]
        heldout = HeldoutStats(*(np.asarray(h[name], dtype=float)
                                 for name in ("ce_sum", "n_tokens", "rep_hits", "wrep_hits", "human_hits")),
                               window=int(h["window"]))
        return cls(
            source=data["source"],
            config=EvalConfig(**{k: v for k, v in data["config"].items() if k in known}),
            prompts=list(data["prompts"]),
            runs={d: runs_from_json(r) for d, r in data["runs"].items()},
            heldout=heldout,
            probes=[dict(p) for p in data["probe_sentences"]],
            global_step=data.get("global_step"),
            thresholds=CollapseThresholds(**data["thresholds"]),
            timings=dict(data.get("timings_s") or {}),
            prompt_ids=data.get("prompt_ids"),
            data=data.get("data"),
        )

    @classmethod
    def load(cls, path: str | Path) -> ModelEvaluation:
        """Read an ``entropy-reg eval`` ``metrics.json`` (or its directory)."""
        import json

        p = Path(path).expanduser()
        p = p / "metrics.json" if p.is_dir() else p
        try:
            data = json.loads(p.read_text("utf-8"))
            return cls.from_json(data)
        except FileNotFoundError:
            raise InputError(f"evaluation not found: {str(p)!r}") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{str(p)!r} is not an entropy-reg eval metrics.json ({type(err).__name__}: {err})"
                             ) from None


def _floats(values: list[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]  # to_json writes NaN as null


def runs_to_json(r: Runs) -> dict[str, Any]:
    return {"decoding": asdict(r.decoding), "seeds": r.seeds, "n_prompts": r.n_prompts,
            "max_new_tokens": r.max_new_tokens, "eos_token_ids": r.eos_token_ids, "token_ids": r.token_ids,
            "entropies": r.entropies, "logprobs": r.logprobs, "texts": r.texts, "hit_eos": r.hit_eos}


def runs_from_json(d: dict[str, Any]) -> Runs:
    return Runs(DecodingConfig(**d["decoding"]), list(d["seeds"]), int(d["n_prompts"]), int(d["max_new_tokens"]),
                list(d["eos_token_ids"]), [list(x) for x in d["token_ids"]], [_floats(e) for e in d["entropies"]],
                [_floats(lp) for lp in d["logprobs"]], list(d["texts"]), [bool(b) for b in d["hit_eos"]])


# ---------------------------------------------------------------------------------------------------
# entry points


def evaluate_loaded(model: Any, tokenizer: Any, config: EvalConfig, source: str = "<in memory>",
                    global_step: int | None = None, thresholds: CollapseThresholds | None = None,
                    label: str | None = None) -> ModelEvaluation:
    """:func:`evaluate_model` on a model already in memory (eval mode is set here)."""
    config.validate()
    decodings = parse_decodings(config.decodings)
    prompts = load_prompts(config.prompts_file)
    heldout_texts = load_heldout(config.heldout_file, config.max_heldout)
    inputs = prepare_inputs(tokenizer, prompts, heldout_texts, config.max_length, config.probe_sentences)
    check_context(inputs.prompt_ids, prompts, config.max_new_tokens, {"evaluated": model})
    data, t0 = None, time.perf_counter()
    if config.data_file is not None:  # before generating: a bad row fails fast
        data = data_statistics(tokenizer, config.data_file, config.data_max_length)
    data_s = time.perf_counter() - t0
    res = measure_model(model.eval(), tokenizer, inputs, decodings, config, label=label or Path(source).name)
    if data is not None:
        res.timings["data"] = data_s
    return ModelEvaluation(source, config, prompts, res.runs, res.heldout, res.probes, global_step,
                           thresholds or CollapseThresholds(), res.timings, inputs.prompt_ids, tokenizer, data=data)


def evaluate_model(source: str, config: EvalConfig | None = None,
                   thresholds: CollapseThresholds | None = None) -> ModelEvaluation:
    """Evaluate ONE model (see the module docstring). Raises InputError (a UserError) on bad inputs.

    All inputs (options, prompt, held-out and ``--data`` files, the model path) are checked before the model
    loads; a prompt that does not fit the model's context with ``max_new_tokens`` is refused after it loads.
    """
    from entropy_reg.report.loading import check_model_path, load_one

    config = config or EvalConfig()
    config.validate()
    parse_decodings(config.decodings)
    load_prompts(config.prompts_file)
    load_heldout(config.heldout_file, config.max_heldout)
    if config.data_file is not None:
        check_data_file(config.data_file)
    check_model_path(source, "evaluated")
    t0 = time.perf_counter()
    model, tokenizer = load_one(source, "evaluated")
    load_s = time.perf_counter() - t0
    ev = evaluate_loaded(model, tokenizer, config, source=source, global_step=checkpoint_global_step(source),
                         thresholds=thresholds)
    ev.timings = {"load": load_s, **ev.timings}
    return ev


def pair_evaluations(baseline: ModelEvaluation, candidate: ModelEvaluation,
                     reference: ModelEvaluation | None = None, n_bootstrap: int = DEFAULT_RESAMPLES,
                     bootstrap_seed: int = 0, thresholds: CollapseThresholds | None = None,
                     tokenizer: Any = None) -> Any:
    """A :class:`~entropy_reg.report.compare.Comparison` of saved evaluations (rows with paired CIs).

    The evaluations must have been made on the same prompts (same token ids), decodings, seeds and
    held-out text; then the rows equal ``compare_models``' on the same models and settings.
    ``write_report`` needs a tokenizer (``tokenizer=``, or an evaluation made in this process).
    """
    from entropy_reg.metrics import average_probe_results
    from entropy_reg.report.compare import CompareConfig, Comparison

    evals = {"baseline": baseline, "candidate": candidate}
    if reference is not None:
        evals[REFERENCE] = reference
    for role, ev in list(evals.items())[1:]:
        _check_pairable(baseline, ev, role)
    c = baseline.config
    config = CompareConfig(
        baseline=baseline.source, candidate=candidate.source, reference=reference.source if reference else None,
        n_bootstrap=n_bootstrap, bootstrap_seed=bootstrap_seed,
        **{**c.measure_settings(), "decodings": list(c.decodings), "progress": False})
    config.validate()
    runs = {d: {role: ev.runs[d] for role, ev in evals.items()} for d in baseline.runs}
    heldout = {role: ev.heldout for role, ev in evals.items()}
    probes = {role: ev.probes for role, ev in evals.items()}
    rows, per_sample = report_rows(runs, heldout, probes, thresholds or baseline.thresholds, n_bootstrap,
                                   bootstrap_seed)
    probe_avg = {role: average_probe_results(p) for role, p in probes.items() if p}
    return Comparison(config, baseline.prompts, rows, runs, per_sample, probe_avg, heldout, {},
                      tokenizer or baseline.tokenizer)


def _check_pairable(a: ModelEvaluation, b: ModelEvaluation, role: str) -> None:
    def fail(what: str) -> None:
        raise InputError(f"cannot pair the evaluations of {a.source!r} (baseline) and {b.source!r} ({role}): "
                         f"{what}; evaluate both with the same options")

    if a.prompts != b.prompts:
        fail("different prompts")
    if a.prompt_ids is not None and b.prompt_ids is not None and a.prompt_ids != b.prompt_ids:
        fail("the prompts encode differently (different tokenizers)")
    if list(a.runs) != list(b.runs):
        fail(f"different decodings ({list(a.runs)} vs {list(b.runs)})")
    for d, ra in a.runs.items():
        rb = b.runs[d]
        if (ra.decoding, ra.seeds, ra.n_prompts, ra.max_new_tokens) != (rb.decoding, rb.seeds, rb.n_prompts,
                                                                         rb.max_new_tokens):
            fail(f"decoding {d!r} differs (settings, seeds or max_new_tokens)")
    ha, hb = a.heldout, b.heldout
    if ha.window != hb.window or ha.n_tokens.shape != hb.n_tokens.shape or not np.array_equal(ha.n_tokens,
                                                                                               hb.n_tokens):
        fail("different held-out texts or --max-length/--rep-window")
    if len(a.probes) != len(b.probes) or (a.probes and a.probes[0]["n"] != b.probes[0]["n"]):
        fail("different probe sentences or --probe-repeats")
