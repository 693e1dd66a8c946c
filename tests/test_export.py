"""``entropy-reg export``: standard HF directories that load without entropy_reg, same logits; LoRA; bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from entropy_reg import cli as top_cli
from entropy_reg.models import SMOLLM2_NAME, load_causal_lm, load_checkpoint_model, load_tokenizer
from entropy_reg.models import export as export_mod
from entropy_reg.module import CausalLMModule

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "max_position_embeddings": 64}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
TEXT = "Explain the Python topic 'for'. 请解释 Python 中的 for 语句。"


def save_module_checkpoint(module: CausalLMModule, path) -> None:
    """What Lightning writes for the module's weights and hyper-parameters (through its own hook)."""
    ckpt = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)  # LoRA: keeps only the adapters
    torch.save(ckpt, path)


def perturb(module: CausalLMModule, seed: int, only_lora: bool) -> None:
    """A stand-in for training: move the weights that train (peft's lora_B starts at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.requires_grad and (not only_lora or "lora_" in name):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_ckpts")
    full = CausalLMModule(tiny_config=TINY)
    perturb(full, 0, only_lora=False)
    save_module_checkpoint(full, root / "full.ckpt")
    lora = CausalLMModule(tiny_config=TINY, lora=LORA)
    perturb(lora, 1, only_lora=True)
    save_module_checkpoint(lora, root / "lora.ckpt")
    return {"full": root / "full.ckpt", "lora": root / "lora.ckpt", "lora_module": lora.eval()}


def ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer(TEXT)["input_ids"]])


@torch.no_grad()
def logits(model, input_ids) -> torch.Tensor:
    return model.eval()(input_ids=input_ids).logits


def export(args, capsys) -> tuple[int, str]:
    try:
        rc = top_cli.main(["export", *map(str, args)])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr()


def test_full_export_loads_without_entropy_reg_with_the_same_logits(checkpoints, tmp_path, capsys):
    out = tmp_path / "nested" / "hf"
    rc, cap = export([checkpoints["full"], "--out", out], capsys)
    assert rc == 0 and f"-> {out}" in cap.out
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()}
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    tok = load_tokenizer(str(checkpoints["full"]))
    x = ids(tok)
    expected = logits(load_checkpoint_model(checkpoints["full"]), x)
    # A fresh interpreter where importing entropy_reg fails: plain transformers only.
    script = textwrap.dedent(f"""
        import sys
        sys.modules["entropy_reg"] = None
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(out)!r})
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
        x = torch.tensor([tok({TEXT!r})["input_ids"]])
        with torch.no_grad():
            torch.save({{"ids": x, "logits": model(input_ids=x).logits}}, {str(tmp_path / "plain.pt")!r})
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    plain = torch.load(tmp_path / "plain.pt")
    assert torch.equal(plain["ids"], x)  # the exported tokenizer encodes like the checkpoint's
    torch.testing.assert_close(plain["logits"], expected, rtol=0, atol=1e-5)


def test_lora_export_is_merged_by_default(checkpoints, tmp_path, capsys):
    out = tmp_path / "merged"
    rc, _ = export([checkpoints["lora"], "--out", out], capsys)
    assert rc == 0
    assert not (out / "adapter_config.json").exists()
    module = checkpoints["lora_module"]
    x = ids(module.tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, x), logits(module.model, x), rtol=0, atol=1e-5)


def test_lora_adapters_only_is_a_peft_dir(checkpoints, tmp_path, capsys):
    out = tmp_path / "adapter"
    out.mkdir()  # an existing empty directory is fine
    rc, _ = export([checkpoints["lora"], "--out", out, "--adapters-only"], capsys)
    assert rc == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny" and config["r"] == 4 and config["lora_alpha"] == 8
    base = load_causal_lm("tiny", tiny_config=TINY)
    restored = PeftModel.from_pretrained(base, str(out))
    module = checkpoints["lora_module"]
    x = ids(AutoTokenizer.from_pretrained(out))
    torch.testing.assert_close(logits(restored, x), logits(module.model, x), rtol=0, atol=1e-6)


def _bad_inputs(tmp_path, checkpoints):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, foreign)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    return [
        ([tmp_path / "missing.ckpt", "--out", tmp_path / "o"], "checkpoint not found"),
        ([tmp_path, "--out", tmp_path / "o"], "is a directory"),
        ([text, "--out", tmp_path / "o"], "cannot be read"),  # the one checkpoint reader (models.read_checkpoint)
        ([foreign, "--out", tmp_path / "o"], "was not written by entropy_reg.CausalLMModule"),
        ([checkpoints["full"], "--out", busy], "is not empty"),
        ([checkpoints["full"], "--out", busy / "keep.txt"], "is a file"),
        ([checkpoints["full"], "--out", tmp_path / "o", "--adapters-only"], "needs a LoRA checkpoint"),
    ]


def test_bad_input_exits_2_with_one_line_and_leaves_nothing(checkpoints, tmp_path, capsys):
    for args, message in _bad_inputs(tmp_path, checkpoints):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        rc, cap = export(args, capsys)
        assert rc == 2, (args, cap.err)
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("entropy-reg export: error: ") and message in lines[0], lines
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, args
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_failure_while_writing_removes_everything(checkpoints, tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("simulated failure after writing")

    monkeypatch.setattr(export_mod, "verify_full", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        export_mod.export_checkpoint(checkpoints["full"], tmp_path / "a" / "b" / "out")
    assert list(tmp_path.iterdir()) == []  # no temp dir, no output, not even the parents it created


def test_export_check_catches_a_written_model_that_differs(checkpoints, tmp_path, monkeypatch):
    real = export_mod.serializable

    def drifting(model):  # what a wrong conversion would do: the written weights differ slightly
        copy = type(model)(model.config)
        copy.load_state_dict(real(model).state_dict())
        with torch.no_grad():
            copy.get_output_embeddings().weight.add_(1e-3)
        return copy

    monkeypatch.setattr(export_mod, "serializable", drifting)
    with pytest.raises(RuntimeError, match="export check failed: logits"):
        export_mod.export_checkpoint(checkpoints["full"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # loads the embedded GGUF SmolLM2-135M twice (~20 s each) and writes ~540 MB
def test_smollm2_gguf_export_dequantised(tmp_path, capsys):
    pytest.importorskip("gguf")
    try:
        module = CausalLMModule(model_name_or_path=SMOLLM2_NAME)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    ckpt = tmp_path / "smollm2.ckpt"
    save_module_checkpoint(module, ckpt)
    out = tmp_path / "smollm2-hf"
    rc, cap = export([ckpt, "--out", out], capsys)
    assert rc == 0, cap.err
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template  # the instruct model's chat template survives
    x = torch.tensor([tok(TEXT)["input_ids"]])
    assert x[0].tolist() == module.tokenizer(TEXT)["input_ids"]
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert next(exported.parameters()).dtype == torch.float32
    torch.testing.assert_close(logits(exported, x), logits(module.model, x), rtol=0, atol=1e-5)
