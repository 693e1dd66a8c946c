"""One model, no baseline: ``evaluate_model`` and ``entropy-reg eval``.

The summary must equal the compare report's numbers for the same model (same metric functions, same
collapse thresholds); two saved evaluations paired later must give compare's rows and CIs exactly.
Tiny models as in ``tests/tiny_compare.py`` (2 CPU cores shared): 3 prompts, 10 new tokens.
"""

import json

import pytest
import torch
from tiny_compare import PROMPTS, one_thread, write_compare_inputs  # noqa: F401 (autouse fixture)

from entropy_reg.report.compare import CompareConfig, compare_models
from entropy_reg.report.evaluate import EvalConfig, ModelEvaluation, evaluate_model, pair_evaluations
from entropy_reg.report.output import to_json

SETTINGS = {"decodings": ["greedy", "top_p"], "max_new_tokens": 10, "seeds": 2, "batch_size": 2, "max_heldout": 6,
            "probe_sentences": 2, "probe_repeats": 3, "max_length": 64, "progress": False}
STEP = 7


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = write_compare_inputs(tmp_path_factory.mktemp("eval_models"), {"a": 0, "b": 1})
    ckpt = torch.load(out["ckpt"], weights_only=False)
    ckpt["global_step"] = STEP  # what Lightning writes
    torch.save(ckpt, out["ckpt"])
    return out


@pytest.fixture(scope="module")
def evaluations(models):
    config = EvalConfig(prompts_file=models["prompts"], **SETTINGS)
    return evaluate_model(models["ckpt"], config), evaluate_model(models["b"], config)


@pytest.fixture(scope="module")
def comparison(models):
    return compare_models(CompareConfig(baseline=models["ckpt"], candidate=models["b"], prompts_file=models["prompts"],
                                        n_bootstrap=200, **SETTINGS))


def test_summary_equals_the_compare_report(evaluations, comparison):
    by_key = {(r.section, r.key): r for r in comparison.rows}
    ppl = next(r for r in comparison.rows if r.key == "perplexity")
    tp = {r.key: r for r in comparison.rows if r.key.startswith("tp_")}
    for role, ev in zip(("baseline", "candidate"), evaluations, strict=True):
        s = ev.summary()
        json.dumps(s, allow_nan=False)  # flat and JSON-able
        assert s["source"] == ev.source
        for d in ("greedy", "top_p"):
            for key in ("seq_rep_4", "rep_2", "distinct_2", "eos_rate", "entropy_mean", "degenerate_share",
                        "repetitive_share", "divergent_share", "healthy_share"):
                assert s[f"{d}/{key}"] == getattr(by_key[(d, key)], role), (d, key, role)
            assert s[f"{d}/low_entropy_share"] == getattr(by_key[(d, "low_entropy_frac")], role)
            loops = getattr(by_key[(d, "degenerate_share")], role) + getattr(by_key[(d, "repetitive_share")], role)
            assert s[f"{d}/any_loop_share"] == loops
            assert sum(s[f"{d}/{c}_share"] for c in ("degenerate", "repetitive", "divergent", "healthy")) == \
                pytest.approx(1.0)
        assert s["perplexity"] == getattr(ppl, role)
        assert s["probe/tp_1"] == getattr(tp["tp_1"], role)
        assert s["probe/tp_3"] == s["probe/tp_last"] == getattr(tp["tp_N"], role)
    assert evaluations[0].summary()["global_step"] == STEP  # read from the .ckpt
    assert evaluations[1].summary()["global_step"] is None  # an HF dir has no step


def test_saved_evaluations_pair_into_the_compare_rows(evaluations, comparison, tmp_path):
    saved = []
    for i, ev in enumerate(evaluations):
        (tmp_path / f"{i}.json").write_text(to_json(ev.to_json()), "utf-8")
        saved.append(ModelEvaluation.load(tmp_path / f"{i}.json"))
    assert saved[0].summary() == evaluations[0].summary()
    paired = pair_evaluations(*saved, n_bootstrap=200, tokenizer=comparison.tokenizer)
    assert [r.to_dict() for r in paired.rows] == [r.to_dict() for r in comparison.rows]
    assert paired.per_sample == comparison.per_sample


def test_unpairable_evaluations_are_refused(evaluations, models):
    from entropy_reg.report.prompts import InputError

    other = evaluate_model(models["a"], EvalConfig(prompts_file=models["prompts"], **{**SETTINGS, "seeds": 1}))
    with pytest.raises(InputError, match="cannot pair.*top_p"):
        pair_evaluations(evaluations[0], other)
