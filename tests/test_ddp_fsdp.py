"""FSDP without a GPU: the module sees a sharding strategy and falls back to the logits path, loudly.

(A real FSDP run needs GPUs; recipes/gpu/qwen2.5-0.5b-instruct/combined_fsdp.yaml is parsed in
test_recipes.py. What the hidden-state path would need under FSDP: docs/distributed.md.)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from entropy_reg.module import CausalLMModule

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "max_position_embeddings": 64}


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_fsdp_falls_back_to_logits_with_a_clear_warning():
    module = CausalLMModule(tiny_config=TINY)
    with torch.no_grad():
        hidden_path = module._loss(batch()).metrics
    module._trainer = SimpleNamespace(strategy=FSDPStrategy(), world_size=1)
    assert module._hidden_path_blocker() == "FSDPStrategy shards the LM-head weight"
    with pytest.warns(UserWarning, match="computing full logits because FSDPStrategy shards the LM-head weight"):
        with torch.no_grad():
            logits_path = module._loss(batch()).metrics
    for key, value in hidden_path.items():  # same loss, other path
        assert logits_path[key].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), key


def test_ddp_keeps_the_hidden_path():
    module = CausalLMModule(tiny_config=TINY)
    module._trainer = SimpleNamespace(strategy=DDPStrategy(), world_size=1)
    assert module._hidden_path_blocker() is None
