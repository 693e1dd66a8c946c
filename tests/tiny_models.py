"""Tiny models built from a config, shared by the tests (no download, milliseconds to build)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, vocab_size: int = 64) -> LlamaForCausalLM:
    """A 2-layer, 32-wide Llama; the same seed gives the same weights."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)
