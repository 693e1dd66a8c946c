"""GenerationEval inside a real (tiny, CPU) Lightning fit, with CSVLogger and offline WandbLogger."""

import csv
import json
import struct
import time

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from entropy_reg.callbacks.generation_eval import DEFAULT_PROMPTS, GenerationEval

CHARS = list("abcdefghijklmnopqrstuvwxyz .,!?") + list("你好世界。从前有一个小村庄，")


def char_tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one token per character
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


class TinyLM(pl.LightningModule):
    def __init__(self, with_tokenizer=True):
        super().__init__()
        torch.manual_seed(0)
        self.model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=64,
                                                  pad_token_id=0, eos_token_id=1, bos_token_id=2))
        self.tokenizer = char_tokenizer() if with_tokenizer else None

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.model(input_ids=batch, labels=batch).loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    g = torch.Generator().manual_seed(0)
    return DataLoader(torch.randint(4, 40, (8, 12), generator=g), batch_size=2)


def fit(tmp_path, callback, loggers, module=None, **trainer_kwargs):
    kwargs = dict(max_steps=4, limit_val_batches=1, val_check_interval=4, num_sanity_val_steps=1,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  accelerator="cpu", devices=1, logger=loggers, callbacks=[callback],
                  default_root_dir=tmp_path)
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(**kwargs)
    trainer.fit(module or TinyLM(), loader(), loader())
    return trainer


def read_wandb_history(path):
    """History rows of an offline ``.wandb`` file (LevelDB-style log of protobuf Records) as flat dicts,
    and whether the run's exit record was written."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, rows, buf, finished = 7, 32768, [], b"", False  # 7-byte file header, 32 KiB blocks
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a record header never straddles blocks: skip the padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk of a record
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            finished |= record.WhichOneof("record_type") == "exit"
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                             for i in record.history.item})
    return rows, finished


def wait_for_wandb_history(path, timeout=20.0):
    # wandb.finish() can return before wandb-core has flushed the log: poll until the exit record.
    deadline = time.monotonic() + timeout
    while True:
        rows, finished = read_wandb_history(path)
        if finished or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_logs_scalars_table_histogram_and_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    cb = GenerationEval(prompts=["hello wor", "the cat", "你好"], every_n_steps=2, decodings=("greedy", "top_p"),
                        max_new_tokens=6, batch_size=2, probe_sentences=["abc abc.", "the dog."],
                        probe_repeats=3, progress=False)
    csv_logger = CSVLogger(tmp_path, name="csv")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="test-genEval")
    fit(tmp_path, cb, [csv_logger, wandb_logger])
    wandb_logger.experiment.finish()

    with open(csv_logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval/greedy/seq_rep_4")]
    # steps 2 and 4 from every_n_steps; the validation end at step 4 is deduplicated
    assert [int(r["step"]) for r in rows] == [2, 4]
    for key in ("entropy_mean", "entropy_p10", "seq_rep_4", "rep_2", "distinct_2", "uniq_seq", "eos_rate",
                "degenerate_frac", "repetitive_frac", "divergent_frac", "healthy_frac", "low_entropy_run"):
        for dec in ("greedy", "top_p"):
            assert rows[0][f"eval/{dec}/{key}"] != ""
    for dec in ("greedy", "top_p"):  # every continuation is in exactly one collapse class
        fracs = [float(rows[0][f"eval/{dec}/{c}_frac"]) for c in ("degenerate", "repetitive", "divergent", "healthy")]
        assert sum(fracs) == pytest.approx(1.0)
    assert 0.0 <= float(rows[0]["eval/probe/tp_3"]) <= 1.0

    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    # wandb-core (0.31) offline writes no wandb-summary.json; read the history from the .wandb log.
    history = [h for h in wait_for_wandb_history(next(run_dirs[0].glob("*.wandb"))) if "eval/greedy/seq_rep_4" in h]
    assert [h["trainer/global_step"] for h in history] == [2, 4]
    for h in history:  # scalars, table, histograms and probe share one row per evaluation
        assert 0.0 <= h["eval/greedy/seq_rep_4"] <= 1.0
        assert h["eval/completions/_type"] == "table-file"
        assert h["eval/greedy/entropy_hist/_type"] == "histogram"
        assert h["eval/probe/curve/_type"] == "table-file"
    files = run_dirs[0] / "files"
    tables = list(files.glob("media/table/eval/completions_*.table.json"))
    assert len(tables) == 2  # one per evaluation
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "decoding", "prompt", "completion", "mean_entropy", "seq_rep_4",
                                "collapse_class"]
    assert len(table["data"]) == 6  # 3 prompts x 2 decodings
    assert {row[6] for row in table["data"]} <= {"degenerate", "divergent", "healthy"}


def test_validation_end_trigger_skips_sanity_check(tmp_path):
    cb = GenerationEval(prompts=["ab"], every_n_steps=None, on_validation_end=True, decodings=["greedy"],
                        max_new_tokens=3, progress=False)
    calls = []
    original = cb.evaluate
    cb.evaluate = lambda trainer, module: calls.append(trainer.global_step) or original(trainer, module)
    csv_logger = CSVLogger(tmp_path, name="csv")
    fit(tmp_path, cb, [csv_logger], max_steps=2, val_check_interval=1)
    assert calls == [1, 2]  # not at the sanity check (step 0)


def test_setup_errors(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer"):
        fit(tmp_path, GenerationEval(prompts=["a"], max_new_tokens=2), False, module=TinyLM(with_tokenizer=False))
    with pytest.raises(ValueError, match="no attribute"):
        fit(tmp_path, GenerationEval(prompts=["a"], model_attr="backbone"), False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompts": []},
        {"prompts": [1, 2]},
        {"every_n_steps": 0},
        {"every_n_steps": None, "on_validation_end": False},
        {"decodings": ("nucleus",)},
        {"decodings": ("greedy", "greedy")},
        {"max_new_tokens": 0},
        {"batch_size": -1},
        {"probe_sentences": "one sentence"},
        {"low_entropy_threshold": 0.0},
    ],
)
def test_bad_arguments_rejected_in_init(kwargs):
    with pytest.raises(ValueError):
        GenerationEval(**kwargs)


def test_prompt_file_and_defaults(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert GenerationEval(prompts=tmp_path / "p.txt").prompts == ["first", "second"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n{"prompt": "y"}\n')
    assert GenerationEval(prompts=str(tmp_path / "p.jsonl")).prompts == ["x", "y"]
    with pytest.raises(ValueError):
        GenerationEval(prompts=tmp_path / "missing.txt")
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in p) for p in DEFAULT_PROMPTS)


def test_only_rank_zero_generates_and_every_rank_meets_the_barrier():
    from types import SimpleNamespace

    barriers = []
    cb = GenerationEval(prompts=["a"], every_n_steps=1)
    cb.evaluate = lambda trainer, module: pytest.fail("rank 1 must not generate")
    strategy = SimpleNamespace(barrier=lambda name=None: barriers.append(name))
    cb._run(SimpleNamespace(global_step=3, is_global_zero=False, strategy=strategy), None)
    assert barriers == ["GenerationEval"]

    def boom(trainer, module):
        raise RuntimeError("generation failed")

    cb.evaluate = boom  # an error on rank 0 still releases the other ranks, then propagates
    with pytest.raises(RuntimeError):
        cb._run(SimpleNamespace(global_step=4, is_global_zero=True, strategy=strategy), None)
    assert barriers == ["GenerationEval", "GenerationEval"]
