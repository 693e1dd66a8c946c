"""token_entropy numerics and entropy summaries."""

import math

import pytest
import torch

from entropy_reg.metrics import entropy_and_logsumexp, entropy_summary, low_entropy_run_length, token_entropy


def test_uniform_and_one_hot():
    # uniform over V=8: H = ln 8
    assert token_entropy(torch.zeros(8)).item() == pytest.approx(math.log(8), abs=1e-6)
    # two tokens with p = (0.5, 0.5) among -inf masked ones: H = ln 2, no NaN from 0 * -inf
    z = torch.tensor([0.0, 0.0, -float("inf"), -float("inf")])
    assert token_entropy(z).item() == pytest.approx(math.log(2), abs=1e-6)


def test_matches_reference_and_shapes():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 11, dtype=torch.float64) * 3
    p = torch.softmax(z, -1)
    ref = -(p * p.log()).sum(-1)
    out = token_entropy(z)
    assert out.shape == (3, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float(), atol=1e-5, rtol=1e-5)


def test_stable_under_underflow_and_half_precision():
    # huge logit gap: p of the others underflows to exactly 0 in float32 -> H ~ 0, not NaN
    z = torch.tensor([1e4, 0.0, -1e4])
    h = token_entropy(z)
    assert torch.isfinite(h).all() and h.item() == pytest.approx(0.0, abs=1e-6)
    zh = (torch.randn(4, 32) * 20).to(torch.bfloat16)
    assert torch.isfinite(token_entropy(zh)).all()


def test_low_entropy_run_length():
    # below 0.5: positions 1,2 (run 2), then 4,5,6 (run 3) -> 3
    assert low_entropy_run_length([1.0, 0.1, 0.2, 0.9, 0.0, 0.3, 0.4, 2.0], 0.5) == 3
    assert low_entropy_run_length([], 0.5) == 0
    assert low_entropy_run_length(torch.tensor([0.5, 0.5]), 0.5) == 0  # strictly below


def test_entropy_summary_pooled():
    # pooled values 0..9 (10 values): mean 4.5, numpy linear quantiles p10 = 0.9, p50 = 4.5, p90 = 8.1
    # below 2.5: 0,1,2 in the first list (run 3); the runs do not cross the boundary
    s = entropy_summary([[0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0]], threshold=2.5)
    assert s["mean"] == pytest.approx(4.5)
    assert s["p10"] == pytest.approx(0.9)
    assert s["p50"] == pytest.approx(4.5)
    assert s["p90"] == pytest.approx(8.1)
    assert s["low_entropy_run"] == 3
    assert s["low_entropy_frac"] == pytest.approx(0.3)
    assert s["count"] == 10
    assert entropy_summary(torch.tensor([1.0, 3.0]))["mean"] == pytest.approx(2.0)


def test_entropy_summary_errors():
    with pytest.raises(ValueError):
        entropy_summary([])
    with pytest.raises(ValueError):
        entropy_summary([[], []])
    with pytest.raises(ValueError):
        entropy_summary([1.0, float("nan")])
    with pytest.raises(ValueError):
        token_entropy([1.0, 2.0])


def test_masked_rows_in_a_batch_and_logsumexp():
    # row 0: two equal logits + two -inf -> ln 2 ; row 1: uniform over 4 -> ln 4 (fast path untouched)
    z = torch.tensor([[1.0, 1.0, -float("inf"), -float("inf")], [0.0, 0.0, 0.0, 0.0]])
    h, lse = entropy_and_logsumexp(z)
    torch.testing.assert_close(h, torch.tensor([math.log(2), math.log(4)]))
    # lse: log(2 e^1) = 1 + ln 2 ; log(4 e^0) = ln 4
    torch.testing.assert_close(lse, torch.tensor([1 + math.log(2), math.log(4)]))
    assert torch.equal(z[0, 2:], torch.tensor([-float("inf")] * 2))  # input not modified
