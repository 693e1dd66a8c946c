"""The main job's script: summary, collapse check and verdict logic, and its code path in a short smoke run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("run_experiment", ROOT / "scripts" / "run_experiment.py")
run_experiment = importlib.util.module_from_spec(_spec)
sys.modules["run_experiment"] = run_experiment
_spec.loader.exec_module(run_experiment)


def _metrics(base_rep, cand_rep, base_tp, cand_tp, base_loop, cand_loop, base_ppl, cand_ppl, ref=True,
             ref_rep=None, ref_ppl=None, cand_flat=0.0):
    def row(section, key, b, c, r=None):
        out = {"section": section, "key": key, "label": key, "variant": "v", "baseline": b, "candidate": c}
        if ref:
            out["reference"] = b * 0.9 if r is None else r
        return out

    heldout = {"baseline": {"perplexity": base_ppl}, "candidate": {"perplexity": cand_ppl}}
    if ref:
        heldout["reference"] = {"perplexity": base_ppl * 1.2 if ref_ppl is None else ref_ppl}
    return {
        "rows": [row("greedy (1 seed)", "seq_rep_4", base_rep, cand_rep, ref_rep),
                 row("greedy (1 seed)", "degenerate_share", base_loop, cand_loop),
                 row("greedy (1 seed)", "repetitive_share", 0.0, cand_flat, 0.1),
                 row("self-reinforcement probe (8 held-out sentences, N=8)", "tp_N", base_tp, cand_tp)],
        "heldout": heldout,
    }


def test_verdict_met_and_missed_per_seed():
    # base model: seq-rep-4 0.20, any loop 0.1, ppl 24; plain SFT ppl 20 (gain 4): keep >= 3.6 of it
    good = _metrics(0.40, 0.15, 0.9, 0.3, 0.2, 0.0, 20.0, 20.3, ref_rep=0.20, ref_ppl=24.0)
    met, text = run_experiment.verdict("ct", {0: good}, [0])
    assert met and "TARGET MET" in text and "ppl gain kept 92% (ok)" in text
    bad_ppl = _metrics(0.40, 0.15, 0.9, 0.3, 0.2, 0.0, 20.0, 21.0, ref_rep=0.20, ref_ppl=24.0)  # 75% kept
    met, text = run_experiment.verdict("ct", {0: good, 1: bad_ppl}, [0, 1])
    assert not met and "ppl gain kept 75% (MISSED)" in text
    flat_loops = _metrics(0.40, 0.15, 0.9, 0.3, 0.2, 0.0, 20.0, 20.3, ref_rep=0.20, ref_ppl=24.0, cand_flat=0.3)
    met, text = run_experiment.verdict("ct", {0: flat_loops}, [0])
    assert not met and "any-loop share 0.30 vs base 0.28 (MISSED)" in text  # high-entropy loops count too
    met, text = run_experiment.verdict("ct", {0: _metrics(0.4, 0.1, 0.9, 0.3, 0.2, 0.0, 20, 20, ref=False)}, [0])
    assert not met and "no reference" in text


def test_collapse_check_says_when_the_testbed_does_not_collapse():
    ok, line = run_experiment.collapse_check({"c": {0: _metrics(0.4, 0.1, 0.9, 0.3, 0.1, 0.0, 20, 20)}}, [0])
    assert ok and "collapses" in line
    ok, line = run_experiment.collapse_check({"c": {0: _metrics(0.4, 0.1, 0.09, 0.08, 0.0, 0.0, 20, 20)}}, [0])
    assert not ok and "DOES NOT SHOW LOW-ENTROPY COLLAPSE" in line


def test_summary_has_reference_baseline_and_candidates_with_sd():
    results = {"ditto": {0: _metrics(0.4, 0.2, 0.9, 0.3, 0.2, 0.0, 20, 20), 1: _metrics(0.6, 0.2, 0.9, 0.3, 0.2, 0.0, 20, 20)},
               "full": {0: _metrics(0.4, 0.1, 0.9, 0.3, 0.2, 0.0, 20, 20), 1: _metrics(0.6, 0.3, 0.9, 0.3, 0.2, 0.0, 20, 20)}}
    table = run_experiment.summarise(results, [0, 1], "baseline", has_reference=True)
    header, _, seq_rep = table.splitlines()[:3]
    assert "reference | baseline | ditto | full" in header
    assert "0.5 ± 0.14" in seq_rep and "0.2 ± 0" in seq_rep and "-60.0%" in seq_rep


@pytest.mark.slow
def test_main_job_code_path_smoke(tmp_path, capsys):
    """The tiny preset end to end in miniature: two trainings, compare with a reference, summary, verdict."""
    out = tmp_path / "exp"
    argv = ["--model", "tiny", "--seeds", "0", "--max-steps", "2", "--parallel", "1", "--out", str(out),
            "--reference", "tiny",
            "--fit-arg=--data.init_args.max_records=64", "--fit-arg=--trainer.limit_val_batches=0",
            "--compare-arg=--max-new-tokens=8", "--compare-arg=--seeds=1", "--compare-arg=--decoding=greedy",
            "--compare-arg=--max-heldout=4", "--compare-arg=--probe-sentences=2", "--compare-arg=--bootstrap=20",
            "--compare-arg=--max-samples=2"]
    assert run_experiment.main(argv) == 0
    printed = capsys.readouterr().out
    assert "step 2/2" in printed  # training progress relayed from the subprocess
    assert "target not met" in printed or "TARGET MET" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and "combined" in summary["per_seed"]
    assert (out / "compare" / "combined" / "seed0" / "report.html").is_file()
    # Resumable: a second run trains and compares nothing again.
    assert run_experiment.main(argv) == 0
    assert "already trained" in capsys.readouterr().out


@pytest.mark.parametrize("argv, culprit", [
    (["--candidate", "recipes/smollm2-135m/nope.yaml"], "recipe not found"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--parallel", "0"], "--parallel must be >= 1"),
    (["--candidate", "recipes/smollm2-135m/baseline.yaml"], "distinct file names"),
])
def test_bad_arguments_exit_2_naming_the_culprit(argv, culprit, capsys):
    with pytest.raises(SystemExit) as exc:
        run_experiment.main(argv)
    assert exc.value.code == 2
    assert culprit in capsys.readouterr().err


def test_target_checks_is_the_one_definition_the_frontier_table_uses():
    # base model: rep 0.18, loops 0.04, ppl 29.4; plain SFT ppl 26.4 (gain 3.0, 90% of it: ppl <= 26.7)
    good = dict(rep=0.10, rep_base=0.18, loops=0.04, loops_base=0.04, low=0.04, tp=0.5, ppl=26.65, ppl_sft=26.4,
                ppl_base=29.4)
    assert all(run_experiment.target_checks(**good).values())
    for key, bad in (("rep", 0.19), ("loops", 0.05), ("loops", None), ("low", 0.06), ("tp", 0.51), ("tp", None),
                     ("ppl", 26.8)):
        checks = list(run_experiment.target_checks(**{**good, key: bad}).values())
        assert checks.count(False) == 1, (key, bad)

    spec = importlib.util.spec_from_file_location("frontier", ROOT / "scripts" / "frontier.py")
    frontier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(frontier)
    base = {"rep4": 0.18, "loops": 0.04, "ppl": 29.4}
    point = {0: {"rep4": 0.10, "loops": 0.04, "low_entropy_loops": 0.0, "tp": 0.7, "ppl": 27.8},
             1: {"rep4": 0.20, "loops": 0.04, "low_entropy_loops": 0.0, "tp": 0.4, "ppl": 26.5}}
    sft = {0: {"ppl": 26.4}, 1: {"ppl": 26.5}}
    assert frontier.target_check(point, base, sft) == [
        "TP(8) <= 0.5 (seed 0)", ">= 90% of the ppl gain (seed 0)", "seq-rep-4 <= base (seed 1)"]
