"""``entropy-reg export CHECKPOINT --out DIR``: a CausalLMModule checkpoint as a standard Hugging Face directory.

::

    entropy-reg export runs/smollm2/combined/last.ckpt --out smollm2-combined
    entropy-reg export runs/smollm2/lora/last.ckpt --out smollm2-lora              # LoRA merged into the weights
    entropy-reg export runs/smollm2/lora/last.ckpt --out smollm2-adapter --adapters-only

The default output loads anywhere with ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)``, without entropy_reg: ``config.json``, ``model.safetensors``
(float weights: a GGUF base such as the embedded SmolLM2 is written dequantised), the generation
config and the tokenizer (with its chat template). LoRA checkpoints are merged (W + scale * B @ A);
``--adapters-only`` writes a peft adapter directory instead (``adapter_config.json``,
``adapter_model.safetensors``, the tokenizer), to load with ``PeftModel.from_pretrained(base, DIR)``.

Before anything is moved into place the export is checked: the written model is loaded back and its
logits on a probe text must equal the checkpoint model's (adapters: the written tensors must equal the
trained ones), and the written tokenizer must encode the probe the same way.

Exit status 2 with one line on stderr for bad input: a missing checkpoint, a file that is not a
CausalLMModule checkpoint, a non-empty ``--out``, ``--adapters-only`` on a full fine-tuning checkpoint,
a checkpoint that holds code rather than data (read with ``torch.load(weights_only=True)``; opt in with
``--trust-checkpoint`` only for a file whose source you trust).
Everything is written into a temporary directory next to ``--out`` and renamed at the end, so a failed
export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from entropy_reg.errors import UserError, exit_on_user_error
from entropy_reg.models.loading import (
    checkpoint_hparams,
    load_checkpoint_model,
    load_tokenizer,
    plain_float_model,
    read_checkpoint,
    trusted_checkpoints,
)

PROBE_TEXT = "The for statement is used to iterate over the elements of a sequence. 请解释 Python 中的 for 语句。"
# Max |logit difference| between the checkpoint model and the exported one read back: a float32
# round trip through safetensors is exact; the margin only absorbs kernel-order noise.
LOGITS_ATOL = 1e-5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="entropy-reg export",
        description="Write a CausalLMModule checkpoint (.ckpt of `entropy-reg fit`) as a standard Hugging Face "
        "directory (safetensors, config, tokenizer) that transformers loads without entropy_reg.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt written by `entropy-reg fit` (CausalLMModule)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory; must not exist or be empty")
    p.add_argument("--adapters-only", action="store_true",
                   help="LoRA checkpoints: write the peft adapter directory instead of merged weights")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint that holds more than data (pickled objects, which run code when read); "
                        "only for a file whose source you trust. Default: refused")
    return p


def read_hparams(path: Path) -> dict[str, Any]:
    """The checkpoint's hyper-parameters, checked to come from CausalLMModule (tensors are mmapped, not read)."""
    return checkpoint_hparams(read_checkpoint(path, mmap=True), str(path))


def check_out_dir(out: Path) -> None:
    if out.is_file() or out.is_symlink():
        raise UserError(f"--out {str(out)!r} is a file; pass a new or empty directory")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; pass a new or empty directory (nothing was overwritten)")


# ``model`` itself, or a plain float copy without a (GGUF) quantizer that ``save_pretrained`` accepts; the
# loader already returns such models, this guards models from elsewhere (the logic lives in loading.py).
serializable = plain_float_model


def _probe_ids(tokenizer: Any) -> torch.Tensor:
    return torch.tensor([tokenizer(PROBE_TEXT)["input_ids"]])


@torch.no_grad()
def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits.float()


def verify_full(out: Path, model: Any, tokenizer: Any) -> None:
    """Read the written directory back with plain transformers; logits and encodings must match."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = _probe_ids(tokenizer)
    reread_tok = AutoTokenizer.from_pretrained(out)
    if list(reread_tok(PROBE_TEXT)["input_ids"]) != ids[0].tolist():
        raise RuntimeError(f"export check failed: the tokenizer written to {out} encodes the probe text differently")
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar for a check the user did not ask about
    try:
        reread = AutoModelForCausalLM.from_pretrained(out, dtype=model.dtype)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    diff = float((_logits(reread, ids) - _logits(model, ids)).abs().max())
    if not diff <= LOGITS_ATOL:
        raise RuntimeError(f"export check failed: logits of the model written to {out} differ from the "
                           f"checkpoint's by {diff:.3g} (> {LOGITS_ATOL})")


def name_base(adapter_config: Path, name: str) -> None:
    """Name the base model the way the checkpoint does (a hub id, a directory, ``embedded:...``, ``tiny``).

    Edited after ``save_pretrained``: peft looks the name up while saving, and ``tiny`` or
    ``embedded:...`` are names only entropy_reg resolves.
    """
    config = json.loads(adapter_config.read_text("utf-8"))
    config["base_model_name_or_path"] = name
    adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")


def verify_adapters(out: Path, model: Any) -> None:
    """The written adapter tensors must equal the trained ones."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    written = load_file(str(out / "adapter_model.safetensors"))
    expected = get_peft_model_state_dict(model)
    if set(written) != set(expected) or any(not torch.equal(written[k], expected[k].cpu()) for k in expected):
        raise RuntimeError(f"export check failed: the adapter weights written to {out} differ from the checkpoint's")


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, adapters_only: bool = False, trust: bool | None = None
) -> Path:
    """Write ``checkpoint`` as a Hugging Face directory ``out`` (see the module docstring); returns ``out``.

    ``trust=True`` loads a checkpoint that holds more than data (see :func:`~entropy_reg.models.read_checkpoint`).

    Raises:
        UserError: bad input (missing or foreign checkpoint, non-empty ``out``, ``adapters_only`` on a
            full fine-tuning checkpoint, an untrusted checkpoint holding code); nothing is written then.
        RuntimeError: the written directory does not reproduce the checkpoint (a bug; nothing is left).
    """
    with trusted_checkpoints(trust):
        return _export(Path(checkpoint).expanduser(), Path(out).expanduser(), adapters_only)


def _export(ckpt: Path, out: Path, adapters_only: bool) -> Path:
    from entropy_reg.models.lora import is_peft_model

    check_out_dir(out)
    hparams = read_hparams(ckpt)
    if adapters_only and hparams.get("lora") is None:
        raise UserError(f"--adapters-only needs a LoRA checkpoint (trained with model.lora=...); {str(ckpt)!r} "
                        "fine-tuned all weights: export it without --adapters-only")
    model = load_checkpoint_model(ckpt, merge_lora=not adapters_only).eval()
    tokenizer = load_tokenizer(str(ckpt))
    writable = model if adapters_only else serializable(model)

    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:  # a read-only place
        _remove_created(created)
        raise UserError(f"--out {str(out)!r}: cannot write in {str(out.parent)!r} ({exc.strerror or exc}); choose a "
                        "writable place (nothing was written)") from None
    try:
        if adapters_only:
            assert is_peft_model(model)
            model.save_pretrained(str(tmp))
            name_base(tmp / "adapter_config.json", str(hparams["model_name_or_path"]))
            tokenizer.save_pretrained(str(tmp))
            verify_adapters(tmp, model)
        else:
            writable.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            verify_full(tmp, model, tokenizer)  # against the checkpoint's model, not the copy written
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; an export is an ordinary directory
        try:
            if out.is_dir():
                out.rmdir()  # empty (checked above)
            os.rename(tmp, out)
        except OSError as exc:  # e.g. an empty directory that cannot be removed (read-only parent, mount point)
            raise UserError(f"--out {str(out)!r}: cannot put the export there ({exc.strerror or exc}); pass a new "
                            "directory in a writable place (nothing was kept)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise
    return out


def _remove_created(created: list[Path]) -> None:
    for parent in created:  # innermost first
        try:
            parent.rmdir()
        except OSError:
            break


def current_umask() -> int:
    """The process umask (read by setting and restoring it): what mode a plain ``open`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: Sequence[str] | None = None) -> int:
    """``entropy-reg export``; bad input prints one line and exits 2."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    with exit_on_user_error("entropy-reg export"):
        out = export_checkpoint(args.checkpoint, args.out, adapters_only=args.adapters_only,
                                trust=True if args.trust_checkpoint else None)
    kind = "peft adapter directory" if args.adapters_only else "Hugging Face model directory"
    print(f"exported {args.checkpoint} -> {out} ({kind}: {', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
