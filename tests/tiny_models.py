"""Tiny models built from a config, and the small set-ups the tests build around them (no download,
milliseconds to build)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from entropy_reg.losses import AntiCopyPenalty, EntropyFloor, EntropyRegularizedLoss, TailMassFloor

# CausalLMModule(tiny_config=TINY): a 1-layer, 32-wide Llama with the tiny tokenizer (entropy_reg.models.tiny).
TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "max_position_embeddings": 64}


def tiny_llama(seed: int = 0, vocab_size: int = 64) -> LlamaForCausalLM:
    """A 2-layer, 32-wide Llama; the same seed gives the same weights."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def three_term_loss(
    top_k: int, floor: float, min_entropy: float, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> EntropyRegularizedLoss:
    """TailMassFloor(top_k, floor), AntiCopyPenalty, EntropyFloor(min_entropy), in that order, with ``weights``."""
    tail, copy, entropy = weights
    return EntropyRegularizedLoss(
        regularizers=[
            TailMassFloor(top_k=top_k, floor=floor, weight=tail),
            AntiCopyPenalty(weight=copy),
            EntropyFloor(min_entropy=min_entropy, weight=entropy),
        ]
    )


def tiny_sft_datamodule(max_length: int, max_records: int):
    """An ``SFTDataModule`` on the tiny tokenizer (batch size 4, seed 0), set up for fitting."""
    from entropy_reg.data import SFTDataModule

    dm = SFTDataModule(tokenizer="tiny", batch_size=4, max_length=max_length, max_records=max_records, seed=0)
    dm.setup("fit")
    return dm
