"""The embedded Python-docs dataset: shape, cleaning, determinism, disjoint splits, the writer script."""

import json
import subprocess
import sys

import pytest

from entropy_reg.data import pydoc_corpus as embedded
from entropy_reg.data.pydoc_corpus import (
    MAX_RESPONSE_CHARS,
    MIN_RESPONSE_CHARS,
    clean_text,
    corpus_fingerprint,
    embedded_sft_records,
    embedded_text_corpus,
    truncate_at_sentence,
)


def test_records_are_cleaned_prompt_response_pairs():
    records = embedded_sft_records(split="all")
    assert len(records) > 500
    for r in records:
        assert set(r) == {"prompt", "response"}
        assert MIN_RESPONSE_CHARS <= len(r["response"]) <= MAX_RESPONSE_CHARS
        assert r["response"] == clean_text(r["response"])  # no newlines or double spaces
    prompts = [r["prompt"] for r in records]
    # ('for' itself is a duplicate of a section of 'compound', which sorts first and wins.)
    assert any(p.startswith("Explain the Python topic 'assert'") for p in prompts)
    assert any("`json.dumps`" in p for p in prompts)


def test_splits_are_disjoint_and_cover_all():
    train, held, every = (embedded_sft_records(split=s) for s in ("train", "heldout", "all"))
    assert len(train) + len(held) == len(every)
    assert 0.05 < len(held) / len(every) < 0.2
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert not {r["response"] for r in train} & {r["response"] for r in held}


def test_max_records_and_fresh_lists():
    first = embedded_sft_records(max_records=3)
    assert first == embedded_sft_records()[:3]
    first[0]["prompt"] = "mutated"
    assert embedded_sft_records(max_records=1)[0]["prompt"] != "mutated"


def test_bad_split_name():
    with pytest.raises(ValueError, match="split"):
        embedded_sft_records(split="test")


def test_deterministic_across_hash_seeds():
    code = "from entropy_reg.data.pydoc_corpus import corpus_fingerprint as f; print(f('all'))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outs == {corpus_fingerprint("all")}


def test_text_corpus_matches_records():
    texts = embedded_text_corpus("heldout")
    assert texts[0] == "{prompt}\n{response}".format(**embedded_sft_records(split="heldout")[0])


def test_truncate_at_sentence_boundary():
    text = "One sentence here. Two sentences here. " + "x" * 50
    assert truncate_at_sentence(text, 45) == "One sentence here. Two sentences here."
    assert truncate_at_sentence("short.", 45) == "short."
    # No sentence end in reach: cut at a word boundary instead.
    assert truncate_at_sentence("word " * 20, 12) == "word word"


def test_topic_sections_split_on_headings():
    raw = "Title\n*****\n\nFirst para\nwraps.\n\nSub\n===\n\nSecond para."
    assert embedded._topic_sections(raw) == [("Title", ["First para wraps."]), ("Sub", ["Second para."])]


def test_make_embedded_dataset_script(tmp_path):
    out = tmp_path / "pydoc.jsonl"
    subprocess.run(
        [sys.executable, "scripts/make_embedded_dataset.py", "--out", str(out), "--max-records", "5"],
        check=True,
        capture_output=True,
    )
    train = [json.loads(line) for line in out.read_text().splitlines()]
    held = [json.loads(line) for line in (tmp_path / "pydoc.heldout.jsonl").read_text().splitlines()]
    assert train == embedded_sft_records(max_records=5)
    assert held == embedded_sft_records(max_records=5, split="heldout")
