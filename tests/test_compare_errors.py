"""Bad inputs to ``entropy-reg compare``: one clear line, exit status 2, no traceback, ``--out`` left as it was (or not created)."""

import json

import pytest
import torch

from entropy_reg.models import save_pretrained_dir
from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer
from entropy_reg.report.cli import main
from entropy_reg.report.settings import split_decodings

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp_err")
    tok = build_tiny_tokenizer()
    save_pretrained_dir(build_tiny_llama(tok, **TINY), tok, root / "a")
    other = build_tiny_tokenizer(vocab_size=512)  # another vocabulary: a different base model
    save_pretrained_dir(build_tiny_llama(other, **TINY), other, root / "other_vocab")
    no_weights = root / "no_weights.ckpt"
    torch.save({"hyper_parameters": {"model_name_or_path": "tiny", "tiny_config": TINY}, "state_dict": {}},
               no_weights)
    prompts = root / "prompts.txt"
    prompts.write_text("What does the function `len` do?\n", "utf-8")
    return {"a": str(root / "a"), "other": str(root / "other_vocab"), "no_weights": str(no_weights),
            "prompts": str(prompts), "root": root}


@pytest.fixture
def out(tmp_path):
    """An --out directory holding an earlier report, which a failed run must not touch."""
    d = tmp_path / "out"
    d.mkdir()
    (d / "report.md").write_text("earlier report\n", "utf-8")
    return d


def _fails(argv, capsys, *needles):
    with pytest.raises(SystemExit) as exc:
        main(["--no-progress", "--max-new-tokens", "4", "--bootstrap", "10", *argv])  # argv's options win
    assert exc.value.code == 2
    full = capsys.readouterr().err
    assert "Traceback" not in full
    err = full.strip().splitlines()[-1]  # the message is the last line
    assert err.startswith("entropy-reg compare: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def _untouched(out):
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert (out / "report.md").read_text("utf-8") == "earlier report\n"


def test_nonexistent_path(paths, out, capsys):
    missing = str(paths["root"] / "nope")
    _fails([paths["a"], missing, "--out", str(out)], capsys, "candidate model not found", missing)
    _untouched(out)


def test_checkpoint_without_weights(paths, out, capsys):
    _fails(["--baseline", paths["no_weights"], "--candidate", paths["a"], "--out", str(out)], capsys,
           "baseline", paths["no_weights"], "no model weights")
    _untouched(out)


def test_directory_without_a_model(paths, out, capsys, tmp_path):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    _fails([paths["a"], str(empty), "--out", str(out)], capsys, "cannot load the candidate model", str(empty))
    _untouched(out)


def test_tokenizer_mismatch_names_both_paths(paths, out, capsys):
    _fails([paths["a"], paths["other"], "--prompts", paths["prompts"], "--out", str(out)], capsys,
           "tokenizer mismatch", paths["a"], paths["other"])
    _untouched(out)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_prompt_file_names_the_file(paths, out, capsys, tmp_path, content):
    empty = tmp_path / "empty.txt"
    empty.write_text(content, "utf-8")
    _fails([paths["a"], paths["a"], "--prompts", str(empty), "--out", str(out)], capsys, "empty", str(empty))
    _untouched(out)


def test_jsonl_prompt_without_prompt_key(paths, out, capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "hi"}) + "\n", "utf-8")
    _fails([paths["a"], paths["a"], "--prompts", str(bad), "--out", str(out)], capsys, f"{bad}:1", "'prompt'")


def test_missing_prompt_file(paths, out, capsys, tmp_path):
    _fails([paths["a"], paths["a"], "--prompts", str(tmp_path / "nope.txt"), "--out", str(out)], capsys,
           "prompts file not found", "nope.txt")


def test_unknown_decoding(paths, out, capsys):
    _fails([paths["a"], paths["a"], "--decoding", "greedy,beam42", "--out", str(out)], capsys,
           "--decoding", "beam42", "greedy")
    _untouched(out)


def test_unwritable_out_dir(paths, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x", "utf-8")  # a directory cannot be created below a file, even as root
    _fails([paths["a"], paths["a"], "--out", str(blocker / "sub")], capsys, "not writable", str(blocker / "sub"))


def test_missing_candidate_and_bad_numbers(paths, out, capsys):
    _fails(["--baseline", paths["a"], "--out", str(out)], capsys, "missing the candidate model")
    _fails([paths["a"], paths["a"], "--seeds", "0", "--out", str(out)], capsys, "--seeds")
    _fails([paths["a"], paths["a"], "--threads", "-1", "--out", str(out)], capsys, "--threads")
    _untouched(out)


def test_empty_heldout_file(paths, out, capsys, tmp_path):
    empty = tmp_path / "held.txt"
    empty.write_text("", "utf-8")
    _fails([paths["a"], paths["a"], "--heldout", str(empty), "--out", str(out)], capsys, "held-out", str(empty))
    _untouched(out)


def test_split_decodings_keeps_overrides_with_their_preset():
    assert split_decodings("greedy,top_p") == ["greedy", "top_p"]
    assert split_decodings("greedy, top_p:top_p=0.95,temperature=0.8 ,min_p") == [
        "greedy", "top_p:top_p=0.95,temperature=0.8", "min_p"]


def test_bad_decoding_override(paths, out, capsys):
    _fails([paths["a"], paths["a"], "--decoding", "top_p:nucleus=0.9", "--out", str(out)], capsys,
           "--decoding", "nucleus")
    _untouched(out)


@pytest.mark.parametrize(
    ("option", "value", "needles"),
    [("--bootstrap", "0", ["--bootstrap must be >= 1, got 0"]),
     ("--max-heldout", "0", ["--max-heldout must be >= 1", "got 0"]),
     ("--max-length", "1", ["--max-length must be >= 2", "got 1"])],
)
def test_out_of_range_option_names_the_flag_as_typed(paths, out, capsys, option, value, needles):
    err = _fails([paths["a"], paths["a"], option, value, "--out", str(out)], capsys, *needles)
    assert "--n-bootstrap" not in err and "pass --heldout" not in err  # not blamed on the text
    _untouched(out)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_unreadable_checkpoint_names_the_file(paths, out, capsys, tmp_path, damage):
    good = tmp_path / "good.ckpt"
    torch.save({"hyper_parameters": {"model_name_or_path": "tiny", "tiny_config": TINY},
                "state_dict": {f"model.{k}": v for k, v in build_tiny_llama(build_tiny_tokenizer(), **TINY)
                               .state_dict().items()}}, good)
    bad = tmp_path / f"{damage}.ckpt"
    bad.write_bytes(b"" if damage == "empty" else good.read_bytes()[: good.stat().st_size // 2])
    _fails([paths["a"], str(bad), "--out", str(out)], capsys, "candidate", str(bad),
           "empty (0 bytes)" if damage == "empty" else "truncated")
    _untouched(out)


def test_failed_compare_creates_no_out_directory(paths, capsys, tmp_path):
    new_out = tmp_path / "new" / "report"
    _fails([paths["a"], paths["other"], "--prompts", paths["prompts"], "--out", str(new_out)], capsys,
           "tokenizer mismatch")
    assert not (tmp_path / "new").exists()
