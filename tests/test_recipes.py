"""Every recipe parses, documents itself, and baseline/regularized pairs differ only in the loss block."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import yaml

from entropy_reg.cli import EntropyRegCLI

pytestmark = [
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
    pytest.mark.filterwarnings("ignore:SFTDataModule. truncated"),
]

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
PAIRS = [
    ("tiny/baseline.yaml", "tiny/tail_floor.yaml"),
    ("tiny/baseline.yaml", "tiny/anti_copy.yaml"),
    ("tiny/baseline.yaml", "tiny/combined.yaml"),
    ("smollm2-135m/baseline.yaml", "smollm2-135m/combined.yaml"),
    ("tiny/baseline.yaml", "tiny/ditto.yaml"),
    ("smollm2-135m/baseline.yaml", "smollm2-135m/ditto.yaml"),
    ("tiny/baseline.yaml", "tiny/seq_ul.yaml"),
    ("tiny/baseline.yaml", "tiny/full.yaml"),
    ("smollm2-135m/baseline.yaml", "smollm2-135m/full.yaml"),
    ("smollm2-135m/baseline.yaml", "smollm2-135m/seq_ul.yaml"),
    ("tiny/baseline.yaml", "tiny/ct.yaml"),
    ("smollm2-135m/baseline.yaml", "smollm2-135m/ct.yaml"),
    ("tiny/baseline.yaml", "tiny/ct_ditto.yaml"),
    ("smollm2-135m/baseline.yaml", "smollm2-135m/ct_ditto.yaml"),
    ("gpu/qwen2.5-0.5b-instruct/baseline.yaml", "gpu/qwen2.5-0.5b-instruct/combined.yaml"),
]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_expected_recipes_exist():
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPES}
    for a, b in PAIRS:
        assert a in names and b in names
    assert "gpu/qwen2.5-0.5b-instruct/combined_fsdp.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=rel)
def test_recipe_parses(path, capsys):
    # --print_config parses and validates every class_path/init_args (nothing is instantiated, so the
    # GPU and hub-model recipes parse on this CPU machine too).
    with pytest.raises(SystemExit) as exc:
        EntropyRegCLI(args=["fit", "--config", str(path), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "entropy_reg.module.CausalLMModule"
    assert printed["model"]["init_args"]["loss"]["class_path"].endswith("EntropyRegularizedLoss")


@pytest.mark.parametrize("path", RECIPES, ids=rel)
def test_recipe_documents_itself(path):
    lines = path.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert len(header) >= 8, "opening comment block missing"
    assert f"entropy-reg fit --config {rel(path)}" in text, "exact launch command missing"
    assert "Override" in text
    # every key that sets a value carries a comment (class_path/init_args/list structure excepted)
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "#" in line:
            continue
        m = re.match(r"^-?\s*([A-Za-z_][\w.]*):\s*(.*)$", stripped)
        if m is None or m.group(1) in ("class_path", "init_args") or m.group(2) == "":
            continue
        pytest.fail(f"{rel(path)}:{number}: key without a comment: {stripped}")


@pytest.mark.parametrize(("base", "other"), PAIRS)
def test_pairs_differ_only_in_loss(base, other):
    a = yaml.safe_load((ROOT / "recipes" / base).read_text())
    b = yaml.safe_load((ROOT / "recipes" / other).read_text())
    # the loss block and the sequence-level objectives block are what a recipe varies
    blocks = [[d["model"]["init_args"].pop(k, None) for k in ("loss", "objectives")] for d in (a, b)]
    assert blocks[0] != blocks[1]
    assert a == b


def _first_batch_loss(recipe: Path, tmp_path: Path) -> float:
    cli = EntropyRegCLI(
        args=["--config", str(recipe), "--data.max_records", "16", "--trainer.logger", "false"], run=False
    )
    dm = cli.datamodule
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        return cli.model._loss(batch).loss.item()


def test_zero_weights_reproduce_baseline_loss(tmp_path):
    recipes = ROOT / "recipes" / "tiny"
    config = yaml.safe_load((recipes / "combined.yaml").read_text())
    zero = copy.deepcopy(config)
    for reg in zero["model"]["init_args"]["loss"]["init_args"]["regularizers"]:
        reg["init_args"]["weight"] = 0.0
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(zero))

    baseline = _first_batch_loss(recipes / "baseline.yaml", tmp_path)
    zeroed = _first_batch_loss(tmp_path / "zero.yaml", tmp_path)
    combined = _first_batch_loss(recipes / "combined.yaml", tmp_path)
    assert zeroed == baseline  # exactly: zero-weight terms do not enter the loss
    assert combined > baseline
