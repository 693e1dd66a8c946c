"""A tiny Llama and a byte-level BPE tokenizer, built entirely in code (no downloads).

CI scale: the default tokenizer (2048 tokens) trains in ~1-2 s on the embedded Python-docs corpus
(:mod:`entropy_reg.data.pydoc_corpus`), and the default model (3 layers, 128 wide, tied embeddings) has ~0.9 M
parameters, enough to learn the corpus' style in a few hundred steps and to fall into greedy
repetition loops, the behaviour this project measures.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from entropy_reg.data.pydoc_corpus import corpus_fingerprint, embedded_text_corpus

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS)

# Each turn is "<|role|>\n{content}<|endoftext|>"; the generation prompt is "<|assistant|>\n".
# The turn ends with EOS (no trailing newline) so that an assistant turn's labels end exactly at EOS
# and a model trained on it stops there. Unknown roles fall back to plain text "<|role|>".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|endoftext|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Bump when the tokenizer recipe (special tokens, template, trainer settings) changes: it is part
# of the on-disk cache key, so stale caches are never reused.
_RECIPE_VERSION = "1"


def default_cache_dir() -> Path:
    """``$ENTROPY_REG_CACHE`` if set, else ``~/.cache/entropy_reg``."""
    env = os.environ.get("ENTROPY_REG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "entropy_reg"


def _train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: a prompt and its response are tokenised separately, and GPT-2 style
    # prefix spaces would insert a space that the concatenated text never had.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknowns
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def _cache_key(vocab_size: int) -> str:
    digest = hashlib.sha256(f"{_RECIPE_VERSION}:{corpus_fingerprint('train')}".encode()).hexdigest()
    return f"tiny-bpe-v{vocab_size}-{digest[:16]}"


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(vocab_size: int, cache_dir: str) -> PreTrainedTokenizerFast:
    path = Path(cache_dir) / _cache_key(vocab_size)
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    tokenizer = _train_tokenizer(embedded_text_corpus("train"), vocab_size)
    try:
        # Write to a temporary sibling then rename: a concurrent or interrupted writer never leaves a
        # half-written directory behind under the final name.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp", dir=path.parent))
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.rename(path)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # a read-only cache location only costs a retrain next time
    return tokenizer


def build_tiny_tokenizer(
    vocab_size: int = 2048, cache_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained deterministically on the embedded Python-docs corpus.

    Special tokens: ``<|endoftext|>`` (bos and eos), ``<|pad|>`` (pad), ``<|system|>``, ``<|user|>``,
    ``<|assistant|>`` (chat roles). No token is added automatically when encoding (like GPT-2).
    The chat template renders each turn as ``<|role|>\\n{content}<|endoftext|>``.

    Args:
        vocab_size: total vocabulary size including the 5 special tokens and 256 byte tokens.
        cache_dir: where the trained tokenizer is stored; default :func:`default_cache_dir`. The
            cache key includes the vocab size and a hash of the corpus (which depends on the Python
            version, see :mod:`entropy_reg.data.pydoc_corpus`).

    Returns:
        A fresh copy (callers may change e.g. ``padding_side`` without affecting other callers);
        repeated calls in a process are served from memory.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(
            f"vocab_size must exceed {256 + len(SPECIAL_TOKENS)} (bytes + special tokens), got {vocab_size}"
        )
    cache = str(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    return copy.deepcopy(_cached_tokenizer(vocab_size, cache))


def build_tiny_llama(
    tokenizer,
    n_layer: int = 3,
    n_embd: int = 128,
    n_head: int = 4,
    intermediate_size: int = 384,
    max_position_embeddings: int = 512,
    seed: int = 0,
    tie_word_embeddings: bool = True,
) -> LlamaForCausalLM:
    """A randomly initialised small Llama sized to ``tokenizer``.

    Args:
        tokenizer: supplies ``len(tokenizer)`` (vocab size) and the pad/bos/eos ids.
        n_layer, n_embd, n_head, intermediate_size, max_position_embeddings: model shape.
        seed: initialisation seed (the global torch RNG state is restored afterwards).
        tie_word_embeddings: share the input embedding and LM head. Default True: at this size the
            untied head would be ~30% of all parameters, and SmolLM2 ties too.

    Returns:
        ``LlamaForCausalLM`` in float32, in train mode.
    """
    import torch

    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=n_embd,
        intermediate_size=intermediate_size,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_head,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.float().train()
