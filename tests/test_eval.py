"""One model, no baseline: ``evaluate_model`` and ``entropy-reg eval``.

The summary must equal the compare report's numbers for the same model (same metric functions, same
collapse thresholds); two saved evaluations paired later must give compare's rows and CIs exactly.
Tiny models as in ``tests/tiny_compare.py`` (2 CPU cores shared): 3 prompts, 10 new tokens.
"""

import json
import subprocess
import sys

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


# ---------------------------------------------------------------------------------------------------
# entropy-reg eval

CLI_FAST = ["--decoding", "greedy,top_p", "--max-new-tokens", "10", "--seeds", "2", "--batch-size", "2",
            "--max-heldout", "6", "--probe-sentences", "2", "--probe-repeats", "3", "--max-length", "64"]


def test_cli_writes_the_report(models, evaluations, tmp_path, capsys):
    from entropy_reg import cli as top_cli

    out = tmp_path / "ev"
    # through the top-level dispatcher, with the progress bar on (the default)
    assert top_cli.main(["eval", models["ckpt"], "--prompts", models["prompts"], "--out", str(out), *CLI_FAST]) == 0
    captured = capsys.readouterr()
    assert "eval: generating" in captured.err and "held-out perplexity" in captured.err  # progress
    assert "greedy/seq_rep_4" in captured.out and "report:" in captured.out
    for name in ("report.md", "report.html", "metrics.json", "entropy_hist.png", "entropy_by_position.png",
                 "probe_tp.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "metrics.json").read_text("utf-8"))
    assert data["summary"] == evaluations[0].summary()  # same model and settings as evaluate_model
    assert data["summary"]["global_step"] == STEP
    assert ModelEvaluation.load(out).summary() == data["summary"]
    md = (out / "report.md").read_text("utf-8")
    assert "| metric | value | variant |" in md and "| seq-rep-4 |" in md and f"global_step {STEP}" in md
    page = (out / "report.html").read_text("utf-8")
    assert "<script" not in page and 'data-key="degenerate_share"' in page and PROMPTS[2] in page


def test_top_level_help_lists_every_command(capsys):
    from entropy_reg import cli as top_cli

    with pytest.raises(SystemExit) as exc:
        top_cli.main(["--help"])
    assert exc.value.code == 0
    usage = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "compare", "export", "eval"):
        assert f"    {name} " in usage, name


@pytest.mark.parametrize(("argv", "expected"), [
    (["missing_dir/model"], "evaluated model not found: 'missing_dir/model'"),
    (["tiny", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["tiny", "--decoding", "beam"], "--decoding: "),
    (["tiny", "--prompts", "nope.jsonl"], "nope.jsonl"),
    (["tiny", "--probe-sentences", "-1"], "--probe-sentences must be >= 0"),
    (["tiny", "--data", "nope.jsonl"], "--data: dataset file not found: 'nope.jsonl'"),
    (["tiny", "--data", "embedded:pydoc", "--data-max-length", "1"], "--data-max-length must be an integer >= 2"),
    # the tiny model has 512 positions: the prompt and 600 new tokens do not fit (as compare refuses)
    (["tiny", "--max-new-tokens", "600"], "with --max-new-tokens 600 it does not fit the evaluated model's context "
                                          "of 512 positions"),
    ([], "the following arguments are required: MODEL"),
])
def test_bad_inputs_exit_2_with_one_line(argv, expected, tmp_path, capsys, monkeypatch):
    from entropy_reg import cli as top_cli

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        top_cli.main(["eval", "--no-progress", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err, err
    if argv:  # argparse's own errors print the usage first
        assert len(err.splitlines()) == 1 and err.startswith("entropy-reg eval: error: "), err
    assert not list(tmp_path.iterdir())  # nothing written


def _write_rows(path, responses):
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "response": r}) + "\n"
                            for i, r in enumerate(responses)), "utf-8")
    return path


def test_cli_data_reports_the_training_rows(models, tmp_path, capsys):
    """--data (issue 21 §5): the statistics SFTDataModule logs, in the summary, metrics.json, the reports and
    one warning line per threshold passed."""
    import warnings

    from entropy_reg.data import SFTDataModule
    from entropy_reg.models.tiny import build_tiny_tokenizer
    from entropy_reg.report.eval_cli import main

    loop = "the cat sat on the mat. " * 8  # ~50 tokens: cut at 32, repeats itself, six times the same
    data = _write_rows(tmp_path / "train.jsonl", [loop] * 6 + ["A fine answer that ends.", "Another one, short."])
    out = tmp_path / "ev"
    assert main([models["ckpt"], "--prompts", models["prompts"], "--out", str(out), "--data", str(data),
                 "--data-max-length", "32", "--decoding", "greedy", "--max-new-tokens", "4", "--seeds", "1",
                 "--max-heldout", "2", "--probe-sentences", "0", "--max-length", "32", "--no-progress"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "metrics.json").read_text("utf-8"))["summary"]
    # the same numbers SFTDataModule computes at setup (entropy_reg.data.statistics, one copy)
    dm = SFTDataModule(tokenizer=build_tiny_tokenizer(), dataset=str(data), val_fraction=0.0, max_length=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    expected = dm.statistics["train"]
    assert {k[5:]: v for k, v in summary.items() if k.startswith("data/")} == {
        **expected, "file": str(data), "max_length": 32, "dropped_rows": 0}
    assert summary["data/rows"] == 8 and summary["data/truncated_share"] == pytest.approx(6 / 8)
    assert summary["data/duplicate_share"] == pytest.approx(5 / 8) and summary["data/rep_4"] > 0.2
    assert ModelEvaluation.load(out).summary() == summary  # saved and read back
    assert "data/truncated_share" in captured.out and "data/rep_4" in captured.out
    warning_lines = [line for line in captured.err.splitlines() if "warning: --data" in line]
    assert len(warning_lines) == 3, captured.err
    assert "6 of 8 rows (75.0%) are cut at max_length before their end" in warning_lines[0]
    assert "rep-4" in warning_lines[1] and "62.5% of the responses are exact duplicates" in warning_lines[2]
    md = (out / "report.md").read_text("utf-8")
    assert "### training data (--data)" in md and "| rows truncated (cut before their end, never ending) | 75.0% |" in md
    assert "- WARNING (training data): 6 of 8 rows" in md
    page = (out / "report.html").read_text("utf-8")
    assert 'data-key="data/rep_4"' in page and "exact duplicates" in page


def test_bad_data_file_exits_2_with_one_line(models, tmp_path, capsys):
    from entropy_reg.report.eval_cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q?", "response": "A."}) + "\n" + json.dumps({"prompt": "Q2?"}) + "\n")
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as exc:
        main([models["a"], "--out", str(out), "--data", str(bad), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("entropy-reg eval: error: --data: "), err
    assert "bad.jsonl" in err and "response" in err, err
    assert not out.exists()


def test_out_that_is_a_file_exits_2(models, tmp_path, capsys):
    from entropy_reg.report.eval_cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main([models["a"], "--out", str(blocker), "--no-progress"])
    assert exc.value.code == 2
    assert "is not writable" in capsys.readouterr().err
    assert blocker.read_text() == "x"


@pytest.mark.slow
def test_eval_on_the_embedded_model_as_a_user_runs_it(tmp_path):
    """The real SmolLM2-135M-Instruct, the way a user types it (a fresh process, default decoding).

    ~30 s of CPU (one thread): loading, 24 built-in prompts x 8 greedy tokens, 4 held-out texts, 1 probe.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "entropy_reg", "eval", "embedded:smollm2-135m-instruct", "--max-new-tokens", "8",
         "--max-heldout", "4", "--probe-sentences", "1", "--out", "tmp", "--threads", "1", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "tmp" / "metrics.json").read_text("utf-8"))
    s = data["summary"]
    assert s["source"] == "embedded:smollm2-135m-instruct" and s["global_step"] is None
    assert 1.0 < s["perplexity"] < 1000.0 and 0.0 <= s["probe/tp_last"] <= 1.0
    assert s["greedy/any_loop_share"] == s["greedy/degenerate_share"] + s["greedy/repetitive_share"]
    assert len(data["runs"]["greedy"]["token_ids"]) == len(data["prompts"])
    assert (tmp_path / "tmp" / "report.html").is_file() and "greedy/seq_rep_4" in proc.stdout
