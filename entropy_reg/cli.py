"""``entropy-reg``: LightningCLI for CausalLMModule + SFTDataModule, plus the ``compare`` subcommand.

::

    entropy-reg fit --config recipes/tiny/combined.yaml
    entropy-reg fit --config recipes/tiny/combined.yaml --trainer.max_steps 50 --model.learning_rate 1e-3
    entropy-reg fit --config recipes/tiny/combined.yaml --print_config
    entropy-reg validate --config recipes/tiny/combined.yaml --ckpt_path runs/.../last.ckpt
    entropy-reg compare BASELINE_RUN CANDIDATE_RUN ...      (see entropy_reg.report.cli)

Model and data are in subclass mode: recipes give ``class_path``/``init_args`` (so a recipe can name
your own LightningModule or datamodule), and overrides may spell either ``--model.init_args.x`` or the
shorthand ``--model.x``. ``model.model_name_or_path`` and ``model.gguf_file`` are linked to
``data.tokenizer`` and ``data.gguf_file``: the tokenizer always matches the model and recipes do not
repeat it (a linked key cannot be set in the data block).

Before any logger starts, W&B is switched to offline mode if no API key is configured (see
:func:`entropy_reg.logging_utils.configure_wandb_env`); if ``wandb`` cannot be imported, a
``WandbLogger`` in the config is replaced by a ``CSVLogger`` in the same ``save_dir``. An unnamed
``WandbLogger`` is named after the recipe file (``recipes/tiny/combined.yaml`` -> ``tiny-combined``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from entropy_reg.logging_utils import configure_wandb_env, wandb_available

_WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
_CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
_DESCRIPTION = (
    "Entropy-regularized SFT of causal LMs (Lightning CLI). "
    "Also: `entropy-reg compare BASELINE CANDIDATE ...` writes a comparison report."
)


class EntropyRegCLI(LightningCLI):
    """LightningCLI with :class:`~entropy_reg.module.CausalLMModule` and :class:`~entropy_reg.data.SFTDataModule`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from entropy_reg.data import SFTDataModule
        from entropy_reg.module import CausalLMModule

        kwargs.setdefault("model_class", CausalLMModule)
        kwargs.setdefault("datamodule_class", SFTDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        # Re-running a recipe into the same run directory must not die on the saved config.yaml.
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"description": _DESCRIPTION})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer")
        parser.link_arguments("model.init_args.gguf_file", "data.init_args.gguf_file")

    def before_instantiate_classes(self) -> None:
        configure_wandb_env()
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        trainer = config.get("trainer")
        if trainer is None:
            return
        loggers = trainer.get("logger")
        items = loggers if isinstance(loggers, list) else [loggers]
        for logger in items:
            if getattr(logger, "class_path", None) != _WANDB_LOGGER:
                continue
            init_args = logger.init_args
            if init_args.get("name") is None:
                init_args["name"] = _run_name(config)
            if not wandb_available():
                rank_zero_warn("wandb cannot be imported: logging to a CSVLogger instead of the WandbLogger.")
                logger.class_path = _CSV_LOGGER
                kept = {k: init_args.get(k) for k in ("save_dir", "name") if init_args.get(k) is not None}
                logger.init_args = type(init_args)(**kept)


def _run_name(config: Any) -> str | None:
    """``<recipe dir>-<recipe stem>`` of the last ``--config`` file, e.g. ``tiny-combined``."""
    paths = config.get("config") or []
    paths = paths if isinstance(paths, list) else [paths]
    for path in reversed(paths):
        rel = getattr(path, "relative", None) or str(path)
        p = Path(rel)
        if p.suffix in (".yaml", ".yml"):
            return f"{p.parent.name}-{p.stem}" if p.parent.name else p.stem
    return None


def _compare(argv: Sequence[str]) -> Any:
    try:
        from entropy_reg.report.cli import main as compare_main
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("entropy_reg.report"):
            raise SystemExit(
                "entropy-reg compare: the report package (entropy_reg.report.cli) is not available in this "
                f"installation ({exc}). Training (`entropy-reg fit ...`) works without it."
            ) from None
        raise
    return compare_main(list(argv))


def main(argv: Sequence[str] | None = None) -> Any:
    """Console entry point: ``compare`` goes to the report CLI, everything else to LightningCLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        return _compare(args[1:])
    configure_wandb_env()  # before anything can import and start wandb
    # args=None when they are sys.argv's: LightningCLI warns when given both.
    return EntropyRegCLI(args=None if argv is None else args)
