"""entropy_reg.hf with transformers.Trainer: equals the Lightning path, logs its statistics, GA-exact."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from datasets import Dataset
from lightning.pytorch import LightningModule
from lightning.pytorch import Trainer as LightningTrainer
from tiny_models import three_term_loss, tiny_llama
from torch.utils.data import DataLoader
from transformers import LlamaForCausalLM, Trainer, TrainingArguments

from entropy_reg.callbacks import CoefficientSchedule, EntropyRegularizer
from entropy_reg.hf import EntropyRegularizedTrainerLoss, attach
from entropy_reg.losses import EntropyRegularizedLoss

V, T = 64, 12
TERMS = ("tail_mass_floor", "anti_copy", "entropy_floor")
STATS = ("ce", "entropy", "tail_mass", "copy_mass", *TERMS, "reg_loss")


def rows(n: int = 4, seed: int = 0) -> list[dict[str, list[int]]]:
    """Right-padded rows with different prompt and padding lengths: uneven target counts per row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, V, (T,), generator=g)
        mask = torch.ones(T, dtype=torch.long)
        mask[T - (i % 3) * 3 :] = 0 if i % 3 else 1
        labels = ids.clone()
        labels[: 1 + i % 4] = -100  # a "prompt"
        labels[mask == 0] = -100
        out.append({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})
    return out


def as_batch(rs: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([r[k] for r in rs]) for k in rs[0]}


def reg_loss(weight: float = 1.0) -> EntropyRegularizedLoss:
    return three_term_loss(top_k=1, floor=0.99, min_entropy=10.0, weights=(weight, weight, weight))


def hf_args(tmp_path, **kwargs) -> TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True, logging_steps=1,
        save_strategy="no", disable_tqdm=True, per_device_train_batch_size=4, dataloader_num_workers=0,
        learning_rate=1e-3,
    )
    return TrainingArguments(**{**defaults, **kwargs})


def train_logs(trainer: Trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


class UserModule(LightningModule):
    """A plain Lightning module around the same HF model: the Lightning path of the comparison."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_trainer_loss_equals_lightning_regularizer_callback(tmp_path):
    model = tiny_llama()
    data = rows(4)
    # Lightning: the user's CE (model(**batch).loss) + EntropyRegularizer's terms, one step.
    module = UserModule(copy.deepcopy(model))
    cb = EntropyRegularizer(reg_loss(), log_every_n_steps=1)
    pl_trainer = LightningTrainer(
        max_steps=1, accelerator="cpu", devices=1, callbacks=[cb], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    pl_trainer.fit(module, train_dataloaders=DataLoader([as_batch(data)], batch_size=None))
    lightning = {k.removeprefix("train/"): float(v) for k, v in pl_trainer.callback_metrics.items()}

    # transformers.Trainer: the whole loss from compute_loss_func, one step on the same 4 rows
    # (the Trainer shuffles them, which a sum over rows does not see).
    loss_fn = EntropyRegularizedTrainerLoss(reg_loss())
    trainer = Trainer(model=copy.deepcopy(model), args=hf_args(tmp_path), train_dataset=Dataset.from_list(data),
                      compute_loss_func=loss_fn)
    attach(trainer)
    trainer.train()
    (hf,) = train_logs(trainer)
    assert hf["loss"] == pytest.approx(lightning["loss"], rel=1e-5)
    for key in STATS:
        assert hf[key] == pytest.approx(lightning[key], rel=1e-5, abs=1e-7), key
    assert hf["reg_loss"] > 0.01  # the comparison is not between two zeros
    assert hf["reg_scale"] == 1.0


class SpyLoss(EntropyRegularizedTrainerLoss):
    """Records what the Trainer passes, to check the conventions the loss relies on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[torch.Tensor, object, bool]] = []

    def __call__(self, outputs, labels, num_items_in_batch=None):
        self.seen.append((labels.clone(), num_items_in_batch, torch.is_grad_enabled()))
        return super().__call__(outputs, labels, num_items_in_batch=num_items_in_batch)


def test_trainer_steps_log_metrics_schedule_and_conventions(tmp_path):
    data = rows(4)
    loss_fn = SpyLoss(reg_loss(), schedule=CoefficientSchedule(warmup_steps=2, start=0.0, end=1.0))
    trainer = Trainer(
        model=tiny_llama(), args=hf_args(tmp_path, max_steps=3, eval_strategy="steps", eval_steps=3),
        train_dataset=Dataset.from_list(data), eval_dataset=Dataset.from_list(data[:2]), compute_loss_func=loss_fn,
    )
    attachment = attach(trainer)
    trainer.train()

    logs = train_logs(trainer)
    assert [h["step"] for h in logs] == [1, 2, 3]
    for h in logs:
        for key in (*STATS, "reg_scale"):
            assert key in h, key
        # loss, ce and reg_loss of one step (no GA, one log per step) are consistent
        assert h["loss"] == pytest.approx(h["ce"] + h["reg_loss"], rel=1e-5)
    # scale = schedule(global_step) at each step begin: 0, 0.5, 1.0
    assert [h["reg_scale"] for h in logs] == [0.0, 0.5, 1.0]
    assert logs[0]["reg_loss"] == 0.0 and logs[2]["reg_loss"] > 0
    (ev,) = [h for h in trainer.state.log_history if "eval_loss" in h]
    for key in ("eval_ce", "eval_entropy", "eval_tail_mass", "eval_copy_mass", *(f"eval_{t}" for t in TERMS)):
        assert key in ev, key
    assert "eval_reg_loss" not in ev

    # What the Trainer passed: unshifted labels (each row is a dataset row as it is), and the number of
    # predicted tokens (labels[:, 1:] != -100) of the accumulated batch; eval calls run without grad.
    expected_rows = {tuple(r["labels"]) for r in data}
    train_calls = [s for s in loss_fn.seen if s[2]]
    assert len(train_calls) == 3
    for labels, n_items, _ in train_calls:
        assert labels.shape == (4, T)
        assert {tuple(r) for r in labels.tolist()} == expected_rows
        assert int(n_items) == int((labels[:, 1:] != -100).sum())
    assert any(not grad for *_, grad in loss_fn.seen)

    trainer.predict(Dataset.from_list(data[:2]))  # runs the loss, logs nothing: its statistics are dropped
    assert not loss_fn.eval_stats.reduce()

    attachment.detach()
    assert not trainer.model._forward_pre_hooks
    assert all(type(cb).__name__ != "_LossMetricsCallback" for cb in trainer.callback_handler.callbacks)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    data = rows(4)
    results = []
    for bs, ga in ((4, 1), (2, 2)):
        loss_fn = EntropyRegularizedTrainerLoss(reg_loss())
        args = hf_args(tmp_path / f"bs{bs}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                       optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0)
        trainer = Trainer(model=tiny_llama(), args=args, train_dataset=Dataset.from_list(data),
                          compute_loss_func=loss_fn)
        attach(trainer)
        trainer.train()
        results.append((train_logs(trainer)[0], [p.detach().clone() for p in trainer.model.parameters()]))
    (big, big_params), (acc, acc_params) = results
    # The micro-batches have different numbers of targets: a mean of per-micro-batch means would differ.
    assert acc["loss"] == pytest.approx(big["loss"], rel=1e-5)
    for key in STATS:
        assert acc[key] == pytest.approx(big[key], rel=1e-5, abs=1e-7), key
    for p, q in zip(big_params, acc_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_direct_call_bf16_logits_and_errors():
    model = tiny_llama().eval()  # eval mode: the statistics go to the eval window
    batch = as_batch(rows(2))
    labels = batch.pop("labels")
    loss_fn = EntropyRegularizedTrainerLoss(reg_loss())
    with torch.no_grad():
        out = model(**batch)
    with pytest.raises(RuntimeError, match=r"attach\(trainer\)"):
        loss_fn(out, labels)  # no hook: no input_ids

    loss_fn.hook_model(model)
    with torch.no_grad():
        out = model(**batch)
        n = int((labels[:, 1:] != -100).sum())
        got = loss_fn(out, labels, num_items_in_batch=torch.tensor(2 * n))
    ref = reg_loss()(logits=out.logits, labels=labels, num_tokens=2 * n, **batch)
    torch.testing.assert_close(got, ref.loss)
    assert loss_fn.eval_stats.reduce()["entropy"] == pytest.approx(float(ref.metrics["entropy"]))
    assert not loss_fn.train_stats.reduce()

    # bf16 logits (a bf16 model / autocast) take the same float32 math as their float32 upcast.
    logits16 = out.logits.to(torch.bfloat16)
    for logits in (logits16, logits16.float()):
        with torch.no_grad():
            model(**batch)
        got = loss_fn({"logits": logits}, labels)
        torch.testing.assert_close(got, reg_loss()(logits=logits16.float(), labels=labels, **batch).loss)

    with torch.no_grad():
        model(**batch)
    with pytest.raises(ValueError, match="labels=None"):
        loss_fn(out, None)
    with pytest.raises(RuntimeError, match="shapes disagree"):
        loss_fn(out, labels[:, :-1])
    with pytest.raises(RuntimeError, match="no \\[B, T, V\\] logits"):
        loss_fn({"loss": torch.tensor(0.0)}, labels)
    # padding-free packing: position_ids restart inside the row and there is no attention_mask
    packed = torch.tensor([[0, 1, 2, 0, 1, 2]])
    with pytest.raises(NotImplementedError, match="padding-free"):
        model(input_ids=torch.randint(0, V, (1, 6)), position_ids=packed)
    loss_fn.unhook_model()
    assert not model._forward_pre_hooks


def test_constructor_and_attach_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="include_ce"):
        EntropyRegularizedTrainerLoss(EntropyRegularizedLoss(include_ce=False))
    with pytest.raises(TypeError, match="EntropyRegularizedLoss"):
        EntropyRegularizedTrainerLoss(torch.nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match="CoefficientSchedule"):
        EntropyRegularizedTrainerLoss(reg_loss(), schedule=lambda step: 1.0)
    with pytest.raises(TypeError, match="transformers.Trainer"):
        attach(tiny_llama())
    plain = Trainer(model=tiny_llama(), args=hf_args(tmp_path), train_dataset=Dataset.from_list(rows(4)))
    with pytest.raises(ValueError, match="nothing to attach"):
        attach(plain)

    # An old transformers without Trainer(compute_loss_func=...): a clear error naming the minimum version.
    def old_init(self, model=None, args=None, train_dataset=None):  # the 4.45 signature, in short
        raise AssertionError("not called")

    monkeypatch.setattr(Trainer, "__init__", old_init)
    assert "compute_loss_func" not in inspect.signature(Trainer.__init__).parameters
    with pytest.raises(ImportError, match=r"transformers>=4\.46"):
        EntropyRegularizedTrainerLoss(reg_loss())


def test_attach_sets_objectives_up_with_the_trainers_tokenizer(tmp_path):
    from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer
    from entropy_reg.objectives import RepetitionConsistency

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(tokenizer, n_layer=1, n_embd=32, n_head=2, intermediate_size=64)
    enc = tokenizer(["The len() function returns the number of items. It takes one argument."] * 4,
                    padding="max_length", max_length=24, truncation=True)
    data = Dataset.from_list([{"input_ids": i, "attention_mask": m, "labels": [t if a else -100 for t, a in zip(i, m, strict=True)]}
                              for i, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)])

    def build(processing_class):
        loss_fn = EntropyRegularizedTrainerLoss(EntropyRegularizedLoss(), objectives=[RepetitionConsistency(rate=1.0)])
        return Trainer(model=model, args=hf_args(tmp_path, max_steps=2), train_dataset=data,
                       processing_class=processing_class, compute_loss_func=loss_fn)

    with pytest.raises(ValueError, match=r"attach\(\): objective 'ditto' \(RepetitionConsistency\) needs a "
                                         r"tokenizer and this Trainer has none: build it with processing_class="):
        attach(build(None))
    trainer = build(tokenizer)  # no sentence_end_ids: found from the trainer's processing_class
    attach(trainer)
    trainer.train()
    assert [h["ditto/ran_share"] for h in train_logs(trainer)] == [1.0, 1.0]


def _two_rank_flush(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    from entropy_reg.hf.trainer import _LossMetricsCallback

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        loss_fn = EntropyRegularizedTrainerLoss(EntropyRegularizedLoss())
        # rank 0: 1 row with entropy 1; rank 1: 3 rows with entropy sum 9 -> token mean 10 / 4, not (1 + 3) / 2
        count = torch.tensor(1 if rank == 0 else 3)
        sums = {k: torch.tensor(1.0 if rank == 0 else 9.0, dtype=torch.float64)
                for k in ("loss", "ce", "entropy", "tail_mass", "copy_mass")}
        loss_fn.train_stats.update(sums, count)
        logs = {"loss": 1.0}
        state = TrainerState()
        state.log_history.append({**logs, "step": 0})
        _LossMetricsCallback(loss_fn).on_log(None, state, TrainerControl(), logs=logs)
        results[rank] = (logs["entropy"], state.log_history[-1].get("entropy"))
    finally:
        dist.destroy_process_group()


def test_statistics_reduced_as_sums_and_counts_across_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    # fork: the children inherit the imported modules (spawn would re-import transformers: ~20 s each)
    mp.start_processes(_two_rank_flush, args=(2, port, results), nprocs=2, join=True, start_method="fork")
    assert dict(results) == {0: (2.5, 2.5), 1: (2.5, 2.5)}
