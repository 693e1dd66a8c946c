"""``--ckpt_path``: resume a run as it was, or refuse.

Lightning's CLI silently replaces the model settings of the command with the checkpoint's when
``--ckpt_path`` is given: a changed learning rate, loss or model size on the command line or in the
recipe would be ignored without a word. :func:`resume_config` makes the rules explicit:

- model and data settings the command gives (recipe or command line) must equal the checkpoint's;
  otherwise a :class:`~entropy_reg.errors.UserError` lists every differing key with both values (to
  train with other settings from these weights, start a new run with ``--model.init_from CKPT``);
- the comparison goes both ways: when the command gives a block (a recipe's ``model:`` or ``data:``), a
  setting it leaves out is its default, and a checkpoint that holds something else is refused too (the
  baseline recipe on a DITTO checkpoint would otherwise resume *with* the objective). ``None`` and an
  empty list are the same setting, and so are ``loss: None`` and a saved loss without regularizers
  (plain cross-entropy either way); ``init_from`` is only compared when given;
- when the command gives no setting of a block at all (``--config`` with only the ``class_path``, or
  no config), the block is taken from the checkpoint;
- trainer, callback and logger settings are the command's (e.g. a larger ``trainer.max_steps`` trains
  longer), and so is ``data.num_workers`` (it does not change what is computed);
- ``model.init_from`` is not applied again: the weights come from the checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from entropy_reg.errors import MissingFileError, UserError

# ckpt_path values Lightning resolves itself (not file names).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
# Data settings the command may change on resume: they do not change what is computed.
HONOURED = {"data": {"num_workers"}, "model": set()}
# Data settings set from the model block by the CLI's links: not settable, and checked as model settings.
LINKED = {"data": {"tokenizer", "gguf_file"}, "model": set()}
_CKPT_KEYS = {"model": "hyper_parameters", "data": "datamodule_hyper_parameters"}
# Settings only compared when the command gives them (resuming never applies them again).
ONLY_WHEN_GIVEN = {"model": {"init_from"}, "data": set()}


def _plain(value: Any) -> Any:
    """Namespaces -> dicts, tuples -> lists: the shape checkpoints store hyper-parameters in."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or math.isclose(a, b, rel_tol=1e-9)
    return a == b


def differences(key: str, given: Any, saved: Any) -> list[str]:
    """``"key: <given> here, <saved> in the checkpoint"`` for every leaf where the two differ.

    Keys only one side has are skipped (a checkpoint of an older version lacks newer settings).
    """
    if isinstance(given, dict) and isinstance(saved, dict):
        if "class_path" in given and "class_path" in saved and given["class_path"] != saved["class_path"]:
            return [f"{key}.class_path: {given['class_path']} here, {saved['class_path']} in the checkpoint"]
        return [d for k in given if k in saved for d in differences(f"{key}.{k}", given[k], saved[k])]
    if isinstance(given, list) and isinstance(saved, list):
        if len(given) != len(saved):
            return [f"{key}: {len(given)} items here, {len(saved)} in the checkpoint"]
        return [d for i, (a, b) in enumerate(zip(given, saved, strict=True)) for d in differences(f"{key}[{i}]", a, b)]
    return [] if _same(given, saved) else [f"{key}: {given!r} here, {saved!r} in the checkpoint"]


def _same_as_left_out(key: str, current: Any, saved: Any) -> bool:
    """Whether a setting the command leaves out (its default ``current``) is what the checkpoint holds."""
    empty = (None, [], {})
    if current in empty and saved in empty:
        return True
    if key == "loss" and current is None and isinstance(saved, dict):
        return not (saved.get("init_args") or {}).get("regularizers")  # plain cross-entropy either way
    return not differences(key, current, saved)


def read_saved_settings(ckpt_path: str) -> dict[str, dict]:
    """``{"model": hyper_parameters, "data": datamodule_hyper_parameters}`` of a checkpoint file."""
    from entropy_reg.models import read_checkpoint

    ckpt = read_checkpoint(ckpt_path, mmap=True)  # names the file when it is empty or truncated
    saved = {}
    for block, key in _CKPT_KEYS.items():
        hparams = dict(ckpt.get(key) or {})
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        saved[block] = _plain(hparams)
    return saved


def _short(value: Any) -> str:
    """A saved setting in a message: class paths instead of whole ``init_args`` blocks."""
    if isinstance(value, dict) and "class_path" in value:
        return str(value["class_path"]).rsplit(".", 1)[-1] + "(...)"
    if isinstance(value, list) and value and all(isinstance(v, dict) and "class_path" in v for v in value):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return repr(value)


def resume_config(parser: Any, config: Any, given: Any, subcommand: str) -> Any:
    """The config of a resumed run (see the module docstring); ``given`` holds only what the command set.

    Raises:
        MissingFileError: ``ckpt_path`` names no file.
        UserError: the checkpoint cannot be read, or given settings differ from the checkpoint's.
    """
    ckpt_path = str(config[subcommand]["ckpt_path"])
    if ckpt_path in SPECIAL_CKPT_PATHS:
        return config
    if not Path(ckpt_path).expanduser().exists():
        raise MissingFileError(f"--ckpt_path {ckpt_path!r}: checkpoint not found")
    saved = read_saved_settings(ckpt_path)
    conflicts: list[str] = []
    restore: dict[str, dict] = {}
    for block in ("model", "data"):
        current = config[subcommand].get(f"{block}.init_args")
        if current is None or not saved[block]:
            continue
        current = _plain(current)
        given_args = given.get(f"{subcommand}.{block}.init_args") if given is not None else None
        given_keys = set(_plain(given_args) or {}) if given is not None else set(current)
        skip = HONOURED[block] | LINKED[block]
        for key in sorted(given_keys - skip):
            if key in saved[block] and key in current:
                conflicts += differences(f"{block}.{key}", current[key], saved[block][key])
        if given_keys - skip:  # the command describes this block: what it leaves out is its default
            for key in sorted(set(current) - given_keys - skip - ONLY_WHEN_GIVEN[block]):
                if key in saved[block] and not _same_as_left_out(key, current[key], saved[block][key]):
                    conflicts.append(f"{block}.{key}: left out here (default {current[key]!r}), "
                                     f"{_short(saved[block][key])} in the checkpoint")
        restore[block] = {k: v for k, v in saved[block].items() if k in current and k not in skip | given_keys}
    if conflicts:
        raise UserError(
            f"--ckpt_path {ckpt_path!r} resumes that run as it was, but the command changes its settings: "
            + "; ".join(conflicts)
            + ". To resume, use the checkpoint's values (or a recipe that matches it, or no model/data settings at "
            "all: they are then taken from the checkpoint); to train with new settings from "
            f"its weights, start a new run with --model.init_from {ckpt_path} instead of --ckpt_path."
        )
    restore = {block: values for block, values in restore.items() if values}
    if restore:
        config = parser.parse_object({subcommand: {b: {"init_args": v} for b, v in restore.items()}}, config)
    if config[subcommand].get("model.init_args.init_from") is not None:
        config[subcommand]["model.init_args.init_from"] = None  # the weights come from the checkpoint
    return config
