"""The package layout: every module imports alone (no import circles), ``entropy_reg.hf`` and
``entropy_reg.training`` stay free of Lightning, and no loose top-level module appears unannounced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "entropy_reg"
# docs/ARCHITECTURE.md justifies every loose module beyond __init__, __main__, cli, errors and module.
LOOSE = {"__init__", "__main__", "cli", "errors", "module", "validation"}

pytestmark = pytest.mark.timeout(600)


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=540)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # One driver interpreter loads the third-party libraries (torch, transformers, Lightning, ...) but no
    # entropy_reg module, then forks one child per module: each child imports its module with no other
    # entropy_reg module loaded, as a fresh interpreter would (a circle shows as an ImportError only when
    # the module that closes it is imported first), at a fraction of an interpreter start each.
    driver = (
        "import os, sys, traceback\n"
        "import torch, transformers, lightning.pytorch, datasets, jsonargparse  # noqa: F401\n"
        "assert not [m for m in sys.modules if m.startswith('entropy_reg')]\n"
        f"names = {modules()!r}\n"
        "bad = []\n"
        "for name in names:\n"
        "    r, w = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.close(r)\n"
        "        try:\n"
        "            __import__(name)\n"
        "            code = 0\n"
        "        except BaseException:\n"
        "            os.write(w, traceback.format_exc().strip().splitlines()[-1].encode())\n"
        "            code = 1\n"
        "        os._exit(code)\n"
        "    os.close(w)\n"
        "    message = os.read(r, 4096).decode()\n"
        "    os.close(r)\n"
        "    if os.waitpid(pid, 0)[1]:\n"
        "        bad.append(name + ': ' + message)\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = run(driver)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["entropy_reg.hf", "entropy_reg.training", "entropy_reg.report.prompts"])
def test_lightning_free_packages_do_not_import_lightning(name):
    result = run(f"import sys, {name}; print(sorted(m for m in ('lightning', 'pytorch_lightning') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_unannounced_loose_top_level_module():
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose <= LOOSE, f"loose modules not in docs/ARCHITECTURE.md: {sorted(loose - LOOSE)}"
    architecture = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for name in LOOSE - {"__init__", "__main__"}:
        assert f"{name}.py" in architecture


def test_every_folder_says_what_it_holds_and_what_it_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = init.read_text().split('"""')[1] if init.read_text().startswith('"""') else ""
        assert doc.strip(), f"{init} has no docstring"
        assert "import" in doc.lower(), f"{init}'s docstring does not say what it may import"


def test_public_paths_still_resolve():
    from entropy_reg.callbacks import CoefficientSchedule, EntropyRegularizer, GenerationEval  # noqa: F401
    from entropy_reg.data import SFTDataModule  # noqa: F401
    from entropy_reg.models import load_checkpoint_model, load_model_and_tokenizer  # noqa: F401
    from entropy_reg.module import CausalLMModule  # noqa: F401
    from entropy_reg.training import CoefficientSchedule as Schedule

    assert Schedule is CoefficientSchedule
