"""Models: loading from every source, checkpoints, the tiny in-code Llama, LoRA, export, finding the LM
and how its forward is called. Imports only ``errors``, ``validation`` and ``data.formatting``/``data.pydoc_corpus``.
"""

from entropy_reg.models.loading import (
    SMOLLM2_INSTALL,
    SMOLLM2_NAME,
    TINY_NAME,
    TRUST_ENV,
    checkpoint_hparams,
    gguf_progress_follows_hf_switch,
    load_causal_lm,
    load_checkpoint_model,
    load_checkpoint_weights,
    load_model_and_tokenizer,
    load_tokenizer,
    locate_smollm2_gguf,
    plain_float_model,
    read_checkpoint,
    save_pretrained_dir,
    trusted_checkpoints,
)

__all__ = [
    "SMOLLM2_INSTALL",
    "SMOLLM2_NAME",
    "TINY_NAME",
    "TRUST_ENV",
    "checkpoint_hparams",
    "gguf_progress_follows_hf_switch",
    "load_causal_lm",
    "load_checkpoint_model",
    "load_checkpoint_weights",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "locate_smollm2_gguf",
    "plain_float_model",
    "read_checkpoint",
    "save_pretrained_dir",
    "trusted_checkpoints",
]
