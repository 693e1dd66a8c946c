"""``entropy-reg``: LightningCLI for CausalLMModule + SFTDataModule, plus the ``compare`` subcommand.

::

    entropy-reg fit --config recipes/tiny/combined.yaml
    entropy-reg fit --config recipes/tiny/combined.yaml --trainer.max_steps 50 --model.learning_rate 1e-3
    entropy-reg fit --config recipes/tiny/combined.yaml --print_config
    entropy-reg validate --config recipes/tiny/combined.yaml --ckpt_path runs/.../last.ckpt
    entropy-reg compare BASELINE_RUN CANDIDATE_RUN ...      (see entropy_reg.report.cli)
    entropy-reg export RUN.ckpt --out DIR                    (see entropy_reg.models.export)
    entropy-reg eval MODEL ...                              (see entropy_reg.report.eval_cli)

Model and data are in subclass mode: recipes give ``class_path``/``init_args`` (so a recipe can name
your own LightningModule or datamodule), and overrides may spell either ``--model.init_args.x`` or the
shorthand ``--model.x``. ``model.model_name_or_path`` and ``model.gguf_file`` are linked to
``data.tokenizer`` and ``data.gguf_file``: the tokenizer always matches the model and recipes do not
repeat it (a linked key cannot be set in the data block).

Before any logger starts, W&B is switched to offline mode if no API key is configured (see
:func:`entropy_reg.training.wandb_env.configure_wandb_env`); if ``wandb`` cannot be imported, a
``WandbLogger`` in the config is replaced by a ``CSVLogger`` in the same ``save_dir``. An unnamed
``WandbLogger`` is named after the recipe file (``recipes/tiny/combined.yaml`` -> ``tiny-combined``).

Errors: a user error (a value a constructor rejects, a bad data file, an unreadable checkpoint, an
unwritable directory: any :class:`~entropy_reg.errors.UserError`) prints one ``entropy-reg: error:``
line and exits 2; anything else is a bug and keeps its traceback (exit 1). ``--ckpt_path`` resumes
the checkpoint's run and refuses model/data settings that differ from it (:mod:`entropy_reg.training.resume`);
``--model.init_from CKPT`` starts a new run from its weights.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import shlex
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from entropy_reg.errors import UserError, exception_chain, exit_on_user_error, find_user_error
from entropy_reg.training.wandb_env import configure_wandb_env, wandb_available

_WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
_CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
_DESCRIPTION = (
    "Entropy-regularized SFT of causal LMs (Lightning CLI). "
    "Also: `entropy-reg compare BASELINE CANDIDATE ...` writes a comparison report."
)


class _HintingParser(LightningArgumentParser):
    """Adds "did you mean" hints to jsonargparse's errors for typo'd options and class names."""

    def error(self, message: str, ex: Exception | None = None):
        # A key unknown to a class (however deep: --model.objectives.init_args.lamda) is one line, not
        # jsonargparse's usage and nested union report.
        unknown = _unknown_key(message) if self.exit_on_error else None
        if unknown is not None:
            print(f"entropy-reg: error: {unknown}", file=sys.stderr)
            self.exit(2)
        # Nested parsers pass the inner message up: add each hint once.
        hints = [h for h in _hints(message) if h not in message]
        return super().error(message + ("\n" + "\n".join(hints) if hints else ""), ex)


def _option_names() -> set[str]:
    from entropy_reg import losses
    from entropy_reg.data import SFTDataModule
    from entropy_reg.module import CausalLMModule

    classes = [CausalLMModule, SFTDataModule, losses.EntropyRegularizedLoss]
    classes += [getattr(losses, n) for n in getattr(losses, "__all__", []) if inspect.isclass(getattr(losses, n, None))]
    names: set[str] = set()
    for cls in classes:
        names.update(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs"))
    return names


def _unknown_key(message: str) -> str | None:
    """``unknown key 'lamda' in --model.objectives.init_args.lamda (...); did you mean 'lam'?``, or None."""
    found = re.search(r"Problem with given class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", message)
    if found is None:
        return None
    class_path, key = found.groups()
    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(__import__(module, fromlist=["_"]), name)
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except Exception:  # noqa: BLE001 - a class that cannot be inspected: keep jsonargparse's report
        return None
    outer = re.search(r'Parser key "([\w.]+)"', message)
    nested = re.findall(r"NestedArg\(key='([\w.]+)'", message)
    option = ".".join(p for p in (outer.group(1) if outer else "", max(nested, key=len) if nested else key) if p)
    close = difflib.get_close_matches(key, accepted, n=1)
    return (f"unknown key {key!r} in --{option}: {class_path} takes {', '.join(accepted)}"
            + (f"; did you mean {close[0]!r}?" if close else ""))


def _hints(message: str) -> list[str]:
    hints = []
    for option in dict.fromkeys(re.findall(r"Option '([\w.]+)' is not accepted", message)):
        close = difflib.get_close_matches(option, sorted(_option_names()), n=1)
        if close:
            hints.append(f"hint: {option!r} is not an option; did you mean {close[0]!r}?")
    for module, name in dict.fromkeys(re.findall(r"module '([\w.]+)' has no attribute '(\w+)'", message)):
        try:
            names = [n for n in dir(__import__(module, fromlist=["_"])) if not n.startswith("_")]
        except Exception:
            continue
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        if close:
            hints.append(f"hint: {module}.{name} does not exist; did you mean " + " or ".join(f"{module}.{c}" for c in close) + "?")
    return hints


class EntropyRegCLI(LightningCLI):
    """LightningCLI with :class:`~entropy_reg.module.CausalLMModule` and :class:`~entropy_reg.data.SFTDataModule`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from entropy_reg.callbacks.final_checkpoint import FinalCheckpoint
        from entropy_reg.data import SFTDataModule
        from entropy_reg.module import CausalLMModule

        kwargs.setdefault("model_class", CausalLMModule)
        kwargs.setdefault("datamodule_class", SFTDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        # Re-running a recipe into the same run directory must not die on the saved config.yaml.
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"description": _DESCRIPTION})
        kwargs.setdefault("parser_class", _HintingParser)
        # last.ckpt at the step the run ended, whatever the recipe's every_n_train_steps and max_steps.
        kwargs.setdefault("trainer_defaults", {"callbacks": [FinalCheckpoint()]})
        self._args: Any = None
        self._created_dirs: list[str] = []  # output directories this command made (removed if it fails empty)
        # The one place where user errors end: one line and exit 2 (run=True also covers fitting).
        with exit_on_user_error("entropy-reg"), _remove_empty_dirs_on_failure(self), _exit_on_interrupt(self):
            super().__init__(*args, **kwargs)
        _report_interrupt(self)

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """Lightning's subcommands, and in ``--help`` also main()'s own (dispatched before this CLI)."""
        super()._add_subcommands(parser, **kwargs)
        for name, run in SUBCOMMANDS.items():
            text = (run.__doc__ or f"entropy-reg {name} --help").strip().splitlines()[0]
            parser._subcommands_action.add_subcommand(name, LightningArgumentParser(description=text), help=text)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._args = args
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Lightning's hook that fills the model config from ``--ckpt_path``: see :mod:`entropy_reg.training.resume`."""
        from entropy_reg.training.resume import resume_config

        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path"):
            self.config = resume_config(self.parser, self.config, self._given_config(), subcommand)

    def _given_config(self) -> Any:
        """Only what the command set (recipes and command line, no defaults); None if that cannot be told."""
        args = sys.argv[1:] if self._args is None else self._args
        try:
            if isinstance(args, dict) or hasattr(args, "as_dict"):
                return self.parser.parse_object(args, defaults=False)
            return self.parser.parse_args(args, defaults=False)
        except (SystemExit, Exception):
            return None

    def instantiate_classes(self) -> None:
        """Build the classes; a value their ``__init__`` rejects is a configuration error (exit 2).

        jsonargparse reports a constructor's ``ValueError`` as the value not validating and wraps it;
        the constructor's own message (``TailMassFloor: weight must be ...``) is the one to show.
        """
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as exc:
            if find_user_error(exc) is not None:
                raise
            cause = [e for e in exception_chain(exc) if isinstance(e, ValueError | MisconfigurationException)][-1]
            raise UserError(
                f"invalid configuration: {cause} (fix it in the --config file or on the command line)"
            ) from exc

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
        _check_output_dirs(trainer, items, self._created_dirs)
        for logger in items:
            if getattr(logger, "class_path", None) != _WANDB_LOGGER:
                continue
            init_args = logger.init_args
            if init_args.get("name") is None:
                init_args["name"] = _run_name(config)
            if not init_args.get("offline") and os.environ.get("WANDB_MODE", "online") == "online":
                host = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
                if not _reachable(host):
                    # wandb.init would wait ~90 s and then fail the run; train and sync later instead.
                    rank_zero_warn(f"W&B host {host} is unreachable: logging offline (upload later with `wandb sync`).")
                    init_args["offline"] = True
            if not wandb_available():
                rank_zero_warn("wandb cannot be imported: logging to a CSVLogger instead of the WandbLogger.")
                logger.class_path = _CSV_LOGGER
                kept = {k: init_args.get(k) for k in ("save_dir", "name") if init_args.get(k) is not None}
                logger.init_args = type(init_args)(**kept)


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd program


def _final_checkpoint(cli: Any) -> Any:
    from entropy_reg.callbacks.final_checkpoint import FinalCheckpoint

    trainer = getattr(cli, "trainer", None)
    return next((c for c in getattr(trainer, "callbacks", None) or [] if isinstance(c, FinalCheckpoint)), None)


def _resume_command(cli: Any, ckpt: str) -> str:
    """The command line of this run with ``--ckpt_path <ckpt>`` instead of any it had."""
    args = cli._args if isinstance(cli._args, list | tuple) else sys.argv[1:]
    kept: list[str] = []
    skip = False
    for arg in map(str, args):
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["entropy-reg", *kept, "--ckpt_path", ckpt])


@contextlib.contextmanager
def _exit_on_interrupt(cli: Any) -> Any:
    """Ctrl-C outside :class:`FinalCheckpoint`'s clean stop (before training, or a second Ctrl-C): exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        print("\nentropy-reg: interrupted before training started; nothing was saved", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except SystemExit:
        # Lightning turns a KeyboardInterrupt inside fit into exit 1 (a second Ctrl-C: abort now).
        final = _final_checkpoint(cli)
        if final is None or final.aborted is None:
            raise
        where = [f"{c.last_model_path}" for c in cli.trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")]
        print(f"entropy-reg: aborted at step {final.aborted}; no checkpoint of that step was written"
              + (f" (the last one: {where[0]})" if where else ""), file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def _report_interrupt(cli: Any) -> None:
    """After a Ctrl-C stop (see :class:`FinalCheckpoint`): say where the checkpoint is, how to resume; exit 130."""
    final = _final_checkpoint(cli)
    if final is None or final.interrupted is None:
        return
    step, ckpt = final.interrupted
    if cli.trainer.is_global_zero:
        print(f"entropy-reg: interrupted at step {step}: checkpoint {ckpt}\n"
              f"resume with: {_resume_command(cli, ckpt)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def _remove_empty_dirs_on_failure(cli: Any) -> Any:
    """A failed command leaves no empty output directory of its own making (``runs/<name>/``)."""
    try:
        yield
    except BaseException:
        for path in reversed(cli._created_dirs):
            with contextlib.suppress(OSError):  # not empty (logs, a W&B run, checkpoints): kept
                os.rmdir(path)
        raise


def _check_output_dirs(trainer: Any, loggers: list, created: list[str] | None = None) -> list[str]:
    """Fail before loading anything when an output directory cannot be written (clear message, exit 2).

    Returns (and appends to ``created``) the directories it created, parents first.
    """
    created = [] if created is None else created
    dirs = [("trainer.default_root_dir", trainer.get("default_root_dir"))]
    for i, logger in enumerate(loggers):
        init_args = getattr(logger, "init_args", None) or {}
        key = "trainer.logger" if len(loggers) == 1 else f"trainer.logger[{i}]"
        dirs.append((f"{key}.init_args.save_dir", init_args.get("save_dir")))
    for callback in trainer.get("callbacks") or []:
        init_args = getattr(callback, "init_args", None) or {}
        if init_args.get("dirpath"):
            dirs.append((f"{getattr(callback, 'class_path', 'callback')}.dirpath", init_args.get("dirpath")))
    for key, path in dirs:
        if not path:
            continue
        missing = []
        parent = Path(path).expanduser().absolute()
        while not parent.exists() and parent != parent.parent:
            missing.append(str(parent))
            parent = parent.parent
        try:
            os.makedirs(path, exist_ok=True)
            created += [d for d in reversed(missing) if d not in created]
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise UserError(
                f"output directory {str(path)!r} ({key}) is not writable: {exc}. Choose another directory."
            ) from None
    return created


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` s (DNS included)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds DNS resolution too (getaddrinfo has no timeout of its own).
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


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
    """Paired comparison report of two models (entropy-reg compare BASELINE CANDIDATE)."""
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


def _export(argv: Sequence[str]) -> Any:
    """Checkpoint to a Hugging Face model directory (entropy-reg export RUN.ckpt --out DIR)."""
    from entropy_reg.models.export import main as export_main

    return export_main(list(argv))


def _eval(argv: Sequence[str]) -> Any:
    """One model: generation, collapse, probe and perplexity report (entropy-reg eval MODEL)."""
    from entropy_reg.report.eval_cli import main as eval_main

    return eval_main(list(argv))


# Subcommands that are not LightningCLI's: name -> function of the remaining arguments.
SUBCOMMANDS = {"compare": _compare, "export": _export, "eval": _eval}


def main(argv: Sequence[str] | None = None) -> Any:
    """Console entry point: ``compare`` goes to the report CLI, everything else to LightningCLI.

    As a program (``argv=None``: the ``entropy-reg`` script, ``python -m entropy_reg``) it returns an
    exit status (0 after a successful run; ``sys.exit`` of the CLI object would print it and exit 1);
    called with ``argv`` it returns the :class:`EntropyRegCLI` object (its trainer, model, ...).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None:
        # As a program: SIGINT stops and keeps the work even when a shell started it as a background job
        # with SIGINT ignored (`nohup ... &`, a script's child), where Python would never see Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args and args[0] in SUBCOMMANDS:  # subcommands of our own; the rest are LightningCLI's
        return SUBCOMMANDS[args[0]](args[1:])
    configure_wandb_env()  # before anything can import and start wandb
    # args=None when they are sys.argv's: LightningCLI warns when given both.
    cli = EntropyRegCLI(args=None if argv is None else args)
    return 0 if argv is None else cli
