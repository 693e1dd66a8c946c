"""The README's code block for users' own LightningModules runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_callback_example_runs(capsys):
    text = README.read_text()
    match = re.search(r"<!-- readme-test -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its <!-- readme-test --> python block"
    namespace: dict = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    for key in ("train/entropy", "train/tail_mass", "train/copy_mass", "train/tail_mass_floor", "train/anti_copy",
                "train/seq_ul/marked_share"):
        assert key in printed, key
