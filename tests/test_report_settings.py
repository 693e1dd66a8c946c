"""eval and compare measure each model with one set of settings: same fields, same flags, same checks."""

from dataclasses import fields

import pytest

from entropy_reg.report.compare import CompareConfig
from entropy_reg.report.evaluate import EvalConfig
from entropy_reg.report.prompts import InputError
from entropy_reg.report.settings import MeasureSettings, settings_from_args

FLAGS = ["--decoding", "greedy,top_p:top_p=0.9,temperature=0.7", "--max-new-tokens", "7", "--seeds", "2",
         "--batch-size", "3", "--prompts", "p.txt", "--heldout", "h.txt", "--max-heldout", "5", "--max-length", "9",
         "--probe-repeats", "4", "--probe-sentences", "0", "--rep-window", "6", "--no-progress"]
EXPECTED = dict(prompts_file="p.txt", decodings=["greedy", "top_p:top_p=0.9,temperature=0.7"], max_new_tokens=7,
                seeds=2, batch_size=3, heldout_file="h.txt", max_heldout=5, max_length=9, probe_repeats=4,
                probe_sentences=0, rep_window=6, progress=False)


def _parsers():
    from entropy_reg.report.cli import build_parser as compare_parser
    from entropy_reg.report.eval_cli import build_parser as eval_parser

    return {"eval": (eval_parser(), ["tiny"]), "compare": (compare_parser(), ["a", "b"])}


def test_every_setting_has_a_flag_in_both_commands():
    assert set(EXPECTED) == {f.name for f in fields(MeasureSettings)}
    for command, (parser, positional) in _parsers().items():
        assert settings_from_args(parser.parse_args(positional + FLAGS)) == EXPECTED, command


def test_both_configs_are_measure_settings_and_pair_field_for_field():
    ev = EvalConfig(**EXPECTED)
    cmp = CompareConfig(baseline="a", candidate="b", **ev.measure_settings())
    assert isinstance(cmp, MeasureSettings) and cmp.measure_settings() == ev.measure_settings() == EXPECTED
    assert EvalConfig().decodings == ["greedy"] and CompareConfig(baseline="a", candidate="b").decodings == [
        "greedy", "top_p"]  # each command keeps its own default decodings


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_a_bad_number_names_its_flag_in_both_commands(command):
    parser, positional = _parsers()[command]
    with pytest.raises(InputError, match=r"--max-length must be >= 2 \(held-out tokens per text"):
        settings_from_args(parser.parse_args(positional + ["--max-length", "1"]))
    with pytest.raises(InputError, match="--seeds must be a positive integer"):
        (EvalConfig if command == "eval" else lambda **k: CompareConfig(baseline="a", candidate="b", **k))(
            seeds=0).validate()
