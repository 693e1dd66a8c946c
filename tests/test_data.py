"""SFTDataModule: file formats, masking token by token, chat rows, bad rows, truncation, batching."""

import json
import warnings

import pytest
import torch

from entropy_reg.data import (
    IGNORE_INDEX,
    SFTCollator,
    SFTDataModule,
    format_prompt,
    is_local_source,
    resolve_pad_id,
    tokenize_chat,
    tokenize_prompt_response,
)
from entropy_reg.errors import MissingFileError, UserError
from entropy_reg.models.tiny import build_tiny_tokenizer

ROWS = [{"prompt": f"Question {i}?", "response": f"Answer number {i} is here."} for i in range(10)]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def make_dm(tok, dataset, **kwargs):
    kwargs.setdefault("val_fraction", 0.0)
    dm = SFTDataModule(tokenizer=tok, dataset=dataset, **kwargs)
    dm.setup()
    return dm


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_file_formats_plain_masking_token_by_token(tmp_path, tok, suffix):
    path = write(tmp_path / f"d{suffix}", ROWS)
    dm = make_dm(tok, path, prompt_format="plain", batch_size=4)
    train = list(dm.train_data)
    assert len(train) == len(ROWS)
    row = train[0]
    prompt_ids = tok(ROWS[0]["prompt"] + "\n").input_ids
    response_ids = tok(ROWS[0]["response"], add_special_tokens=False).input_ids
    assert row["input_ids"] == prompt_ids + response_ids + [tok.eos_token_id]
    assert row["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [tok.eos_token_id]


def test_batches_are_right_padded_long_tensors(tmp_path, tok):
    rows = [{"prompt": "p", "response": "short."}, {"prompt": "p", "response": "a much longer response " * 3}]
    dm = make_dm(tok, write(tmp_path / "d.jsonl", rows), prompt_format="plain", batch_size=2)
    batch = next(iter(dm.val_dataloader() or dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long for t in batch.values())
    lengths = batch["attention_mask"].sum(1)
    short = int(lengths.argmin())
    n = int(lengths[short])
    assert (batch["input_ids"][short, n:] == tok.pad_token_id).all()
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][short, :n].all() and not batch["attention_mask"][short, n:].any()


def test_chat_format_for_prompt_response_rows(tok):
    ids, labels = tokenize_prompt_response(tok, "Hi?", "Hello.", prompt_format="auto")  # tiny has a template
    prompt_ids = tok(format_prompt(tok, "Hi?"), add_special_tokens=False).input_ids
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert tok.decode(ids[len(prompt_ids) :]) == "Hello.<|endoftext|>"
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]


def test_messages_rows_label_only_assistant_turns(tmp_path, tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "Uno."},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "Dos."},
    ]
    dm = make_dm(tok, write(tmp_path / "chat.jsonl", [{"messages": messages}] * 3))
    row = dm.train_data[0]
    ids, labels = row["input_ids"], row["labels"]
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
    # Walk the labels: every labeled token equals its input token; labeled runs are the assistant turns.
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    runs.append(current)
    assert [tok.decode(r) for r in runs] == ["Uno.<|endoftext|>", "Dos.<|endoftext|>"]


def test_tokenize_chat_matches_generation_prompt(tok):
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    ids, labels = tokenize_chat(tok, messages)
    first_label = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert ids[:first_label] == tok(prompt, add_special_tokens=False).input_ids


@pytest.mark.parametrize(
    ("suffix", "bad_row", "key"),
    [
        (".jsonl", {"prompt": "p"}, "response"),  # missing field
        (".json", {"prompt": 5, "response": "r"}, "prompt"),  # wrong type
        (".parquet", {"prompt": "p", "response": "   "}, "response"),  # empty response
    ],
)
def test_bad_rows_name_file_row_and_key(tmp_path, tok, suffix, bad_row, key):
    rows = ROWS[:2] + [bad_row] + ROWS[2:4]
    path = write(tmp_path / f"bad{suffix}", rows)
    with pytest.raises(ValueError) as info:
        make_dm(tok, path)
    message = str(info.value)
    assert f"bad{suffix}" in message and "row 2" in message and repr(key) in message


def test_bad_messages_rows(tmp_path, tok):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]}
    path = write(tmp_path / "chat.jsonl", [good, bad])
    with pytest.raises(ValueError, match=r"chat\.jsonl.*row 1.*messages\[1\]\.content"):
        make_dm(tok, path)
    no_answer = {"messages": [{"role": "user", "content": "q"}]}
    with pytest.raises(ValueError, match="row 1.*no assistant turn"):
        make_dm(tok, write(tmp_path / "chat2.jsonl", [good, no_answer]))


def test_missing_column_and_empty_dataset(tmp_path, tok):
    with pytest.raises(ValueError, match=r"cols\.jsonl.*'response'.*columns"):
        make_dm(tok, write(tmp_path / "cols.jsonl", [{"prompt": "p", "answer": "a"}]))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        make_dm(tok, str(tmp_path / "nope.jsonl"))


def test_drop_and_truncate(tmp_path, tok):
    rows = ROWS[:3] + [{"prompt": "p", "response": "long " * 200}]
    path = write(tmp_path / "d.jsonl", rows)
    with pytest.warns(UserWarning, match="dropped 1 of 4 train rows"):
        dm = make_dm(tok, path, truncation="drop", max_length=32)
    assert len(dm.train_data) == 3 and dm.dropped["train"] == 1
    with pytest.warns(UserWarning, match="truncated 1 of 4 train rows"):
        dm = make_dm(tok, path, truncation="truncate", max_length=32)
    assert len(dm.train_data) == 4 and max(len(r) for r in dm.train_data["input_ids"]) == 32
    with pytest.raises(ValueError, match="no usable training rows"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_dm(tok, path, truncation="drop", max_length=4)


def test_deterministic_split(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", ROWS * 4)
    a, b, c = (make_dm(tok, path, val_fraction=0.25, seed=s) for s in (0, 0, 1))
    assert len(a.val_data) == 10 and len(a.train_data) == 30
    assert a.val_data["input_ids"] == b.val_data["input_ids"]
    assert a.val_data["input_ids"] != c.val_data["input_ids"]
    first = next(iter(a.train_dataloader()))["input_ids"]
    assert torch.equal(first, next(iter(b.train_dataloader()))["input_ids"])  # seeded shuffle


def test_embedded_default_and_prepare_tokenizer():
    dm = SFTDataModule(max_records=6, batch_size=3)
    assert dm.prepare_tokenizer() is dm.prepare_tokenizer()  # before setup, loaded once
    dm.setup()
    assert len(dm.train_data) == 6 and len(dm.val_data) == 6  # val = embedded held-out split
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 3 and (batch["labels"] != IGNORE_INDEX).any()


def test_pad_id_fallback(tok):
    class NoPad:
        pad_token_id, eos_token_id = None, 7

    assert resolve_pad_id(tok) == tok.pad_token_id
    assert resolve_pad_id(NoPad()) == 7
    NoPad.eos_token_id = None
    with pytest.raises(ValueError, match="neither a pad nor an eos"):
        resolve_pad_id(NoPad())
    batch = SFTCollator(7)([{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [3], "labels": [3]}])
    assert batch["input_ids"].tolist() == [[1, 2], [3, 7]]
    assert batch["labels"].tolist() == [[-100, 2], [3, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_argument_validation():
    with pytest.raises(ValueError, match="truncation"):
        SFTDataModule(truncation="cut")
    with pytest.raises(ValueError, match="val_fraction"):
        SFTDataModule(val_fraction=1.5)


# ------------------------------------------------------------------ file-level errors name file and line


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("", ["is empty"]),
        ("\n   \n\n", ["only blank lines"]),
        ('{"prompt": "a", "response": "b"}\n\n{"prompt": "a" "response": "b"}\n', ["line 3", "invalid JSON"]),
        ('{"prompt": "a", "response": "b"}\n[1, 2]\n', ["line 2", "JSON object", "list"]),
    ],
    ids=["empty", "blank-only", "malformed-line", "not-an-object"],
)
def test_unreadable_jsonl_names_file_and_line(tmp_path, tok, content, needles):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        make_dm(tok, str(path))
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message
    assert "\n" not in message  # one line


def test_directory_is_not_a_dataset_file(tmp_path, tok):
    with pytest.raises(UserError, match=f"{tmp_path}.*is a directory"):
        make_dm(tok, str(tmp_path))


@pytest.mark.parametrize("name", ["data/good.jsnl", "good.jsnl", "./data/good", "a/b/c"])
def test_path_looking_name_is_a_missing_file_not_a_hub_id(tmp_path, tok, monkeypatch, name):
    import datasets

    def no_hub(*args, **kwargs):  # the hub must not even be asked
        raise AssertionError(f"{name!r} was sent to the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "good.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    with pytest.raises(MissingFileError, match="dataset file not found") as info:
        make_dm(tok, name)
    if name == "data/good.jsnl":
        assert "did you mean" in str(info.value) and "good.jsonl" in str(info.value)


def test_hub_ids_are_not_taken_for_paths():
    assert not is_local_source("tatsu-lab/alpaca")
    assert not is_local_source("teknium/OpenHermes-2.5")  # a version number is not a file extension
    assert not is_local_source("imdb")
    assert is_local_source("data/good.jsnl") and is_local_source("rows.csv")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
     ({"num_workers": -1}, "num_workers must be an integer >= 0"),
     ({"max_records": 0}, "max_records must be an integer >= 1"),
     ({"max_length": 1}, "max_length must be an integer >= 2")],
)
def test_loader_settings_are_validated(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        SFTDataModule(**kwargs)


def test_one_row_dataset_cannot_hold_out_validation(tmp_path, tok):
    path = write(tmp_path / "one.jsonl", ROWS[:1])
    with pytest.raises(UserError, match=r"one\.jsonl: 1 row cannot be split.*val_fraction to 0"):
        make_dm(tok, path, val_fraction=0.05)
    assert len(make_dm(tok, path, val_fraction=0.0).train_data) == 1  # no validation asked: fine


def test_all_validation_rows_dropped(tmp_path, tok):
    train = write(tmp_path / "train.jsonl", ROWS)
    val = write(tmp_path / "val.jsonl", [{"prompt": "p " * 40, "response": "r " * 40}] * 2)
    with pytest.raises(UserError, match=r"val\.jsonl: all 2 validation rows were dropped.*max_length=40"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_dm(tok, train, val_dataset=val, max_length=40, truncation="drop")
