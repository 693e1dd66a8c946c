"""transformers' GGUF conversion bars follow its progress switch (so compare --no-progress is quiet)."""

import pytest
import transformers.modeling_gguf_pytorch_utils as gguf_utils
from transformers.utils import logging as hf_logging

from entropy_reg.models.loading import _from_pretrained


class _RecordingLoader:
    """Stands in for AutoModelForCausalLM: records whether the GGUF module's bar would be drawn."""

    seen: list[bool] = []

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        bar = gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")
        cls.seen.append(bar.disable)
        bar.close()
        return object()


@pytest.mark.parametrize("enabled", [False, True])
def test_gguf_bars_follow_the_hf_progress_switch(tmp_path, enabled, capsys):
    was = hf_logging.is_progress_bar_enabled()
    original = gguf_utils.tqdm
    _RecordingLoader.seen = []
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        _from_pretrained(_RecordingLoader, str(tmp_path), "model.gguf")
        drawn = capsys.readouterr().err
        _from_pretrained(_RecordingLoader, str(tmp_path), None)  # not GGUF: untouched
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
    assert _RecordingLoader.seen[0] is (not enabled)
    assert _RecordingLoader.seen[1] is False
    assert gguf_utils.tqdm is original  # restored
    assert ("Converting" in drawn) is enabled
