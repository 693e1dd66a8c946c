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
