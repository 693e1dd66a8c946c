"""ProgressLog prints complete progress lines (step k/N, loss, time left) at its cadence."""

import io
import re

import lightning as L
import pytest
import torch

from entropy_reg.callbacks import ProgressLog
from entropy_reg.callbacks.progress import format_duration


class _Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback, max_steps=7, accumulate=1):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    trainer = L.Trainer(max_steps=max_steps, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        accumulate_grad_batches=accumulate)
    trainer.fit(_Regression(), torch.utils.data.DataLoader(data, batch_size=4))


def test_lines_at_cadence_with_total_and_time_left():
    out = io.StringIO()
    _fit(ProgressLog(every_n_steps=3, name="run", stream=out))
    lines = out.getvalue().splitlines()
    steps = [int(re.search(r"step (\d+)/7", line).group(1)) for line in lines]
    assert steps == [1, 3, 6, 7]  # the first, every 3rd, the last
    assert all(line.startswith("[run] ") for line in lines)
    assert all(re.search(r"loss [0-9.e+-]+ \| [0-9.]+ s/step \| elapsed .* \| ~.* left$", line) for line in lines)
    assert lines[-1].endswith("~0 s left")


def test_gradient_accumulation_counts_optimizer_steps():
    out = io.StringIO()
    _fit(ProgressLog(every_n_steps=2, stream=out), max_steps=4, accumulate=2)
    steps = [int(re.search(r"step (\d+)/4", line).group(1)) for line in out.getvalue().splitlines()]
    assert steps == [1, 2, 4]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_cadence_rejected(bad):
    with pytest.raises(ValueError, match="every_n_steps"):
        ProgressLog(every_n_steps=bad)


def test_format_duration():
    assert format_duration(4.2) == "4 s"
    assert format_duration(115) == "1m55s"
    assert format_duration(3725) == "1h02m"
