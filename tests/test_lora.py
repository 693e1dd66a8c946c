"""LoRA through CausalLMModule: settings, only adapters train, hidden path, adapter-only checkpoints, loading."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from tiny_models import TINY, three_term_loss, tiny_sft_datamodule

from entropy_reg.data import SFTDataModule
from entropy_reg.losses import EntropyRegularizedLoss
from entropy_reg.models import load_checkpoint_model, load_model_and_tokenizer
from entropy_reg.models.lora import apply_lora, lora_config
from entropy_reg.module import CausalLMModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:SFTDataModule. truncated"),
    # Lightning's non-strict load lists the frozen base weights an adapters-only checkpoint leaves out
    pytest.mark.filterwarnings("ignore:Found keys that are in the model state dict but not in the checkpoint"),
]

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


def regularized_loss() -> EntropyRegularizedLoss:
    return three_term_loss(top_k=5, floor=0.5, min_entropy=5.0, weights=(1.0, 0.5, 0.2))


def randomize_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """peft starts lora_B at 0 (the adapter is a no-op, lora_A gets no gradient): make both matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def datamodule() -> SFTDataModule:
    return tiny_sft_datamodule(max_length=64, max_records=16)


@pytest.fixture(scope="module")
def batch(datamodule) -> dict[str, torch.Tensor]:
    return next(iter(datamodule.train_dataloader()))


def trainer(tmp_path, max_steps: int = 2) -> Trainer:
    return Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                   default_root_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"rank": 4}, "unknown LoRA setting 'rank'"),
        ({"alpha": 8, "lora_alpha": 8}, "'alpha' and 'lora_alpha' set the same"),
        ({"r": 0}, "r must be an integer >= 1"),
        ({"r": 2.5}, "r must be an integer >= 1"),
        ({"alpha": -1}, "alpha must be a number > 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ("r=4", "must be a dict of LoRA settings"),
    ],
)
def test_bad_settings_are_rejected_with_the_key(settings, match):
    with pytest.raises(ValueError, match=match):
        lora_config(settings)


def test_settings_map_to_peft_and_unknown_targets_fail():
    config = lora_config({"r": 2, "alpha": 4, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"], "bias": "none"})
    assert (config.r, config.lora_alpha, config.lora_dropout) == (2, 4, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert lora_config(None).target_modules == "all-linear"
    from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer

    model = build_tiny_llama(build_tiny_tokenizer(), **TINY)
    with pytest.raises(ValueError, match="lora:.*not_a_layer"):
        apply_lora(model, {"target_modules": ["not_a_layer"]})


def test_only_adapters_train_and_hidden_path_reaches_them(batch):
    module = CausalLMModule(tiny_config=TINY, loss=regularized_loss(), lora=LORA)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # every attention and MLP projection is adapted ("all-linear"), the LM head is not
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert type(module.model.get_output_embeddings()) is torch.nn.Linear
    assert module._hidden_path_blocker() is None  # the fast path is used with a PeftModel

    randomize_adapters(module)
    results = []
    for hidden in (True, False):
        module.hparams.use_hidden_path = hidden
        module.zero_grad()
        out = module._loss(batch)
        out.loss.backward()
        results.append((out.loss.item(), {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}))
        # the frozen base gets no gradient at all
        assert all(p.grad is None for p in module.parameters() if not p.requires_grad)
    (loss_h, grads_h), (loss_l, grads_l) = results
    assert loss_h == pytest.approx(loss_l, rel=1e-5)
    for name in grads_h:
        assert grads_h[name].abs().sum() > 0, name  # every adapter is in the loss' path
        torch.testing.assert_close(grads_h[name], grads_l[name], rtol=1e-4, atol=1e-6)
    # the adapters change the model's output (they are not bypassed by get_decoder())
    with torch.no_grad(), module.model.disable_adapter():
        plain = module.model(input_ids=batch["input_ids"]).logits
    with torch.no_grad():
        adapted_logits = module.model(input_ids=batch["input_ids"]).logits
    assert (plain - adapted_logits).abs().max() > 1e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory, datamodule):
    """Two steps of LoRA SFT, a checkpoint, and the weights before/after."""
    tmp = tmp_path_factory.mktemp("lora_fit")
    module = CausalLMModule(tiny_config=TINY, loss=regularized_loss(), lora=LORA, learning_rate=1e-2,
                            lr_schedule="constant")
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    t = trainer(tmp)
    t.fit(module, datamodule=datamodule)
    ckpt = tmp / "lora.ckpt"
    t.save_checkpoint(ckpt)
    return module.eval(), before, ckpt


def test_training_moves_only_adapters(trained):
    module, before, _ = trained
    moved = {n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n for n in moved)
    assert any(".lora_A." in n for n in moved) and any(".lora_B." in n for n in moved)


def test_checkpoint_holds_adapters_and_config_and_loads_everywhere(trained, batch):
    module, _, ckpt = trained
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    keys = set(data["state_dict"])
    assert keys == {n for n, p in module.named_parameters() if p.requires_grad}
    hp = data["hyper_parameters"]
    assert hp["model_name_or_path"] == "tiny" and hp["tiny_config"] == TINY and hp["lora"] == LORA
    n_saved = sum(v.numel() for v in data["state_dict"].values())
    assert n_saved < 0.25 * sum(p.numel() for p in module.parameters())

    with torch.no_grad():
        expected = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # what `entropy-reg compare` loads: the plain HF model with the adapters merged
    merged, tokenizer = load_model_and_tokenizer(str(ckpt))
    assert not hasattr(merged, "peft_config") and tokenizer is not None
    with torch.no_grad():
        got = merged.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the PeftModel itself
    peft_model = load_checkpoint_model(ckpt, merge_lora=False).eval()
    assert hasattr(peft_model, "peft_config")
    with torch.no_grad():
        got = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # Lightning's own loader (resume, load_from_checkpoint) with the adapters-only state dict
    restored = CausalLMModule.load_from_checkpoint(ckpt).eval()
    for (n, p), q in zip(module.named_parameters(), restored.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_truncated_adapter_checkpoint_fails_loudly(trained, tmp_path):
    _, _, ckpt = trained
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    dropped = sorted(data["state_dict"])[0]
    del data["state_dict"][dropped]
    data["state_dict"]["model.base_model.model.bogus.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.ckpt"
    torch.save(data, bad)
    with pytest.raises(ValueError, match=r"1 adapter weights missing.*1 unknown keys"):
        load_checkpoint_model(bad)
    with pytest.raises(ValueError, match="adapter weights missing"):
        CausalLMModule.load_from_checkpoint(bad)


def test_init_from_a_lora_checkpoint_starts_from_the_merged_model(trained, batch):
    """``init_from`` a LoRA checkpoint: the new run's (full, or freshly adapted) model is the merged one."""
    module, _, ckpt = trained
    with torch.no_grad():
        expected = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = CausalLMModule(tiny_config=TINY, init_from=str(ckpt)).eval()
    assert not hasattr(full.model, "peft_config")
    # new LoRA adapters on top of the merged weights start as a no-op (peft's lora_B = 0)
    relora = CausalLMModule(tiny_config=TINY, init_from=str(ckpt), lora=LORA).eval()
    for fresh in (full, relora):
        with torch.no_grad():
            got = fresh.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_resume_restores_adapters_and_continues(trained, datamodule, tmp_path):
    done, _, ckpt = trained
    module = CausalLMModule(tiny_config=TINY, loss=regularized_loss(), lora=LORA, learning_rate=1e-2,
                            lr_schedule="constant")
    t = trainer(tmp_path, max_steps=2)  # already reached: restores the checkpoint, trains no further
    t.fit(module, datamodule=datamodule, ckpt_path=str(ckpt))
    for (n, p), q in zip(done.named_parameters(), module.parameters(), strict=True):
        assert torch.equal(p, q), n
    t = trainer(tmp_path, max_steps=3)
    t.fit(module, datamodule=datamodule, ckpt_path=str(ckpt))
    assert t.global_step == 3


def test_sequence_objectives_train_only_the_adapters(datamodule, tmp_path):
    from entropy_reg.objectives import RepetitionConsistency, SequenceUnlikelihood

    objectives = [RepetitionConsistency(rate=1.0, max_sentence_tokens=24),
                  SequenceUnlikelihood(rate=1.0, prefix_length=4, continuation_length=8, ngram=2)]
    module = CausalLMModule(tiny_config=TINY, lora=LORA, objectives=objectives, learning_rate=1e-2,
                            lr_schedule="constant")
    randomize_adapters(module)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    t = Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1,
                default_root_dir=str(tmp_path))
    t.fit(module, datamodule=datamodule)
    logged = {k for k in t.callback_metrics}
    assert {"train/ditto", "train/seq_ul"} <= logged, logged
    assert float(t.callback_metrics["train/ditto"]) > 0
    moved = {n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n for n in moved)
