"""Tiny model directories, a checkpoint and a prompt file for the ``entropy-reg compare`` end-to-end tests.

Small on purpose (2 CPU cores shared): a 1-layer, 32-wide Llama, 3 prompts (one Chinese), 10 new tokens,
200 bootstrap resamples.
"""

import json
from pathlib import Path

import pytest
import torch

from entropy_reg.models import save_pretrained_dir
from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64}
PROMPTS = ["What does the function `json.dumps` do?", "Explain the Python topic 'for'.", "请解释 Python 中的 for 语句。"]
FAST = ["--max-new-tokens", "10", "--seeds", "2", "--batch-size", "2", "--bootstrap", "200", "--max-heldout", "6",
        "--probe-sentences", "2", "--probe-repeats", "3", "--max-length", "64", "--no-progress"]


def write_compare_inputs(root: Path, names: dict[str, int]) -> dict[str, str]:
    """HF dirs ``root/<name>`` (init seed per name), ``a.ckpt`` with model ``a``'s weights, prompts.jsonl."""
    tok = build_tiny_tokenizer()
    out: dict[str, str] = {}
    for name, seed in names.items():
        model = build_tiny_llama(tok, seed=seed, **TINY)
        save_pretrained_dir(model, tok, root / name)
        out[name] = str(root / name)
        if name == "a":
            # What CausalLMModule checkpoints hold (entropy_reg.models.load_checkpoint_model's contract).
            ckpt = root / "a.ckpt"
            torch.save({"hyper_parameters": {"model_name_or_path": "tiny", "gguf_file": None, "tiny_config": TINY},
                        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
            out["ckpt"] = str(ckpt)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in PROMPTS), "utf-8")
    out["prompts"] = str(prompts)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for the module (import it into a test module to use it).

    The CI box has 2 cores shared with other jobs: one thread is ~10x faster for a 32-wide model under
    contention than two spinning threads.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
