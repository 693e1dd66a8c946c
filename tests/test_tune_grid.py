"""scripts/tune_smollm2.py: every variant of the tuning grid is a valid recipe that differs from its base
recipe in exactly the keys the grid names (so a tuning row's config is what its name says)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from entropy_reg.cli import EntropyRegCLI

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import tune_smollm2  # noqa: E402


def flatten(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from flatten(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        yield f"{prefix}len", len(node)
        for i, v in enumerate(node):
            yield from flatten(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node


@pytest.mark.parametrize("name", list(tune_smollm2.GRID))
def test_variant_parses_and_changes_only_its_keys(name, tmp_path, capsys):
    path = tune_smollm2.write_variant(name, tmp_path)
    _, base, changes = tune_smollm2.GRID[name]
    with pytest.raises(SystemExit) as exc:
        EntropyRegCLI(args=["fit", "--config", str(path), "--print_config"])
    assert exc.value.code in (0, None)
    capsys.readouterr()
    variant = dict(flatten(yaml.safe_load(path.read_text())))
    original = dict(flatten(yaml.safe_load((tune_smollm2.RECIPES / base).read_text())))
    differing = {k for k in variant.keys() | original.keys() if variant.get(k) != original.get(k)}
    allowed = tuple(k.replace(".+", "") for k in changes)  # "+": appended list item (and the list's length)
    assert all(k.startswith(allowed) for k in differing), sorted(differing)
    assert bool(differing) == bool(changes)


def test_table_and_list_run_without_results(tmp_path, capsys):
    assert tune_smollm2.main(["--list"]) == 0
    assert "ditto-w2" in capsys.readouterr().out
    assert tune_smollm2.main(["--table", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[0].startswith("| variant |")


def test_table_reads_every_comparison_and_lines_up_seeds(tmp_path):
    import json

    def metrics(rep, loop, tp, ppl):
        rows = [{"section": "greedy", "key": "seq_rep_4", "baseline": 0.5, "candidate": rep},
                {"section": "greedy", "key": "degenerate_share", "baseline": 0.5, "candidate": loop},
                {"section": "self-reinforcement probe (8 sentences)", "key": "tp_N", "baseline": 0.9, "candidate": tp}]
        return {"rows": rows, "heldout": {"baseline": {"perplexity": 20.0}, "candidate": {"perplexity": ppl}}}

    for seed, values in ((0, (0.25, 0.0, 0.6, 21.0)), (1, (0.4, 0.125, 0.7, 20.2))):
        path = tmp_path / "full" / "compare" / "ditto-w2" / f"seed{seed}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(metrics(*values)))
    text = tune_smollm2.table(tmp_path)
    assert "| ditto-w2 | full | 0 | 0.500 -> 0.250 (0.50) | 0.50 -> 0.00 | 0.900 -> 0.600 | 20.00 -> 21.00 (+5.0%) |" in text
    assert "| ditto-w2 | full | 2 | 0.50 / 0.80 | 0.00 / 0.12 | 0.60 / 0.70 | +5.0% / +1.0% |" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "x"], "--seeds: 'x' is not a non-negative integer"),
    (["--only", "nope"], "argument --only: invalid choice: 'nope'"),
])
def test_bad_arguments_exit_2_naming_the_culprit(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        tune_smollm2.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
