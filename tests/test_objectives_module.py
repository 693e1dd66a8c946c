"""Objectives in CausalLMModule: baseline identity at weight/rate 0, logging, schedule, checkpoints, rate draws."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from entropy_reg.data import SFTDataModule
from entropy_reg.module import CausalLMModule
from entropy_reg.objectives import ObjectiveRunner, RepetitionConsistency

pytestmark = pytest.mark.filterwarnings("ignore:SFTDataModule. truncated")

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "max_position_embeddings": 128}


def ditto(**kwargs) -> RepetitionConsistency:
    return RepetitionConsistency(**{"rate": 1.0, "max_sentence_tokens": 48, **kwargs})


@pytest.fixture(scope="module")
def datamodule() -> SFTDataModule:
    dm = SFTDataModule(tokenizer="tiny", batch_size=4, max_length=112, max_records=24, seed=0)
    dm.setup("fit")
    return dm


def fit(datamodule, tmp_path, objectives, steps=3, seed=0, **trainer_kwargs) -> CausalLMModule:
    torch.manual_seed(seed)
    module = CausalLMModule(tiny_config=TINY, objectives=objectives, learning_rate=1e-2, lr_schedule="constant")
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **trainer_kwargs,
    )
    trainer.fit(module, datamodule=datamodule)
    return module


def params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.model.parameters()])


def test_weight_zero_and_rate_zero_train_bit_identically_to_the_baseline(datamodule, tmp_path):
    baseline = params(fit(datamodule, tmp_path, None))
    assert torch.equal(params(fit(datamodule, tmp_path, [ditto(weight=0.0)])), baseline)
    assert torch.equal(params(fit(datamodule, tmp_path, [ditto(rate=0.0)])), baseline)
    assert not torch.equal(params(fit(datamodule, tmp_path, [ditto(weight=1.0)])), baseline)


def test_logged_statistics_and_checkpoint_rebuild(datamodule, tmp_path):
    module = CausalLMModule(tiny_config=TINY, objectives=[ditto(seed=7, lam=0.25)], warmup_steps=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer = Trainer(
        max_steps=2, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), log_every_n_steps=1,
        limit_val_batches=0, callbacks=[ckpt], enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    m = trainer.callback_metrics
    for key in ["train/ditto", "train/ditto/p_repeat", "train/ditto/p_previous", "train/ditto/rise_share",
                "train/ditto/skipped_share", "train/ditto/ran_share"]:
        assert key in m, key
    assert float(m["train/ditto"]) > 0 and float(m["train/ditto/ran_share"]) == 1.0
    assert 0 <= float(m["train/ditto/skipped_share"]) < 1
    header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/ditto" in header

    # hyper-parameters hold the objective as a class_path dict; the checkpoint rebuilds it
    config = module.hparams.objectives[0]
    assert config["class_path"].endswith("RepetitionConsistency") and config["init_args"]["lam"] == 0.25
    restored = CausalLMModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    (obj,) = restored._objectives.objectives
    assert isinstance(obj, RepetitionConsistency) and obj.lam == 0.25 and obj.seed == 7
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert state["entropy_reg"]["objectives"] == {"seeds": {"ditto": 7}}


def test_resume_restores_the_checkpoint_seed():
    runner = ObjectiveRunner([ditto(seed=1, rate=0.5)], "test")
    with pytest.warns(UserWarning, match="checkpoint's seed 5"):
        runner.load_state_dict({"seeds": {"ditto": 5}})
    assert runner.objectives[0].seed == 5


def test_rate_draws_depend_on_seed_and_step_only():
    obj = ditto(rate=0.5, seed=3)
    draws = [obj.runs_at(s) for s in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    # same answer in any order and from a fresh object (another rank, a resumed run)
    again = ditto(rate=0.5, seed=3)
    assert [again.runs_at(s) for s in reversed(range(2000))][::-1] == draws
    assert [ditto(rate=0.5, seed=4).runs_at(s) for s in range(2000)] != draws
    assert not any(ditto(rate=0.0).runs_at(s) for s in range(100))
    assert all(ditto(rate=1.0).runs_at(s) for s in range(100))


def test_schedule_scale_multiplies_the_objective_and_zero_skips_it(datamodule):
    module = CausalLMModule(tiny_config=TINY, objectives=[ditto(weight=2.0)])
    batch = next(iter(datamodule.train_dataloader()))
    module.model.eval()  # no dropout: the two calls see the same function
    full = module._objectives_loss(batch)
    module.loss_fn.scale = 0.5
    half = module._objectives_loss(batch)
    assert half.item() == pytest.approx(0.5 * full.item(), rel=1e-6)
    module.loss_fn.scale = 0.0
    assert module._objectives_loss(batch) is None


def test_module_rejects_bad_objectives():
    with pytest.raises(TypeError, match="objectives\\[0\\]"):
        CausalLMModule(tiny_config=TINY, objectives=["ditto"])
    with pytest.raises(ValueError, match="distinct names"):
        CausalLMModule(tiny_config=TINY, objectives=[ditto(), ditto()])


def test_sharding_strategies_reject_generation_objectives():
    class Generates(RepetitionConsistency):
        needs_generation = True

    runner = ObjectiveRunner([Generates()], "test")
    runner.check_strategy("DDPStrategy")
    with pytest.raises(RuntimeError, match="FSDPStrategy"):
        runner.check_strategy("FSDPStrategy")


def test_module_schedule_holds_objectives_off_then_turns_them_on(datamodule, tmp_path):
    """``schedule=CoefficientSchedule(hold_steps=2)``: plain SFT for 2 steps (bit-identical to the baseline's
    first 2 steps, no objective forward), then the objective runs; the checkpoint rebuilds the schedule."""
    from entropy_reg.callbacks import CoefficientSchedule

    def run(schedule, steps, objectives):
        torch.manual_seed(0)
        module = CausalLMModule(tiny_config=TINY, objectives=objectives, learning_rate=1e-2,
                                lr_schedule="constant", schedule=schedule)
        ckpt = ModelCheckpoint(dirpath=tmp_path / f"ckpt{steps}", save_last=True, save_top_k=0)
        trainer = Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path / f"log{steps}"),
                          log_every_n_steps=1, limit_val_batches=0, callbacks=[ckpt], enable_progress_bar=False,
                          enable_model_summary=False)
        trainer.fit(module, datamodule=datamodule)
        return module, trainer

    held, _ = run({"hold_steps": 2, "kind": "constant"}, 2, [ditto()])
    plain, _ = run(None, 2, None)
    assert torch.equal(params(held), params(plain))
    assert held.loss_fn.scale == 0.0
    on, trainer = run(CoefficientSchedule(hold_steps=2, kind="constant"), 4, [ditto()])
    assert on.loss_fn.scale == 1.0 and float(trainer.callback_metrics["train/ditto/ran_share"]) == 1.0
    rows = (tmp_path / "log4" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    scales = [float(r.split(",")[header.index("train/reg_scale")]) for r in rows[1:]
              if r.split(",")[header.index("train/reg_scale")]]
    assert scales == [0.0, 0.0, 1.0, 1.0]
    restored = CausalLMModule.load_from_checkpoint(tmp_path / "ckpt4" / "last.ckpt")
    assert restored._schedule == CoefficientSchedule(hold_steps=2, kind="constant")
    with pytest.raises(ValueError, match="schedule: .*unexpected keyword argument 'hold'"):
        CausalLMModule(tiny_config=TINY, schedule={"hold": 2})
    with pytest.raises(ValueError, match="schedule must be a CoefficientSchedule, a dict of its arguments or None, got int"):
        CausalLMModule(tiny_config=TINY, schedule=3)
    with pytest.raises(ValueError, match="hold_steps must be an integer >= 0"):
        CausalLMModule(tiny_config=TINY, schedule={"hold_steps": -1})
