"""DITTO self-reinforcement probe: arithmetic with a fake model, ranges with a tiny Llama, the plot."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from entropy_reg.metrics import (
    average_probe_results,
    multi_sentence_probe,
    plot_probe,
    self_reinforcement_probe,
)

V = 4


class CopyCountingLM(torch.nn.Module):
    """Fake LM whose next-token distribution we control.

    At position t it predicts ``ids[t + 1 - S]`` (the token one sentence back, i.e. "copy") with
    probability ``q_c = 1 - 0.5 ** c`` where c = number of completed copies before position t+1
    (c = (t + 1) // S), spreading the rest uniformly. For c = 0 (inside copy 1) the distribution is
    uniform. So TP(1) = 1/V, TP(n) = q_{n-1} for n >= 2.
    """

    def __init__(self, S):
        super().__init__()
        self.S = S
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        L = input_ids.shape[1]
        probs = torch.full((1, L, V), 1.0 / V)
        for t in range(L):
            c = (t + 1) // self.S
            if c >= 1 and t + 1 - self.S >= 0:
                q = 1 - 0.5**c
                target = input_ids[0, t + 1 - self.S]
                probs[0, t] = (1 - q) / (V - 1)
                probs[0, t, target] = q
        return SimpleNamespace(logits=probs.log())


def test_probe_arithmetic_with_controlled_probabilities():
    sentence = [1, 2, 3]  # S = 3, no prefix -> position 0 dropped from every copy, 2 scored tokens/copy
    model = CopyCountingLM(S=3)
    model.train()
    res = self_reinforcement_probe(model, sentence, n_repeats=4)
    assert model.training  # mode restored
    # copy 1: uniform -> TP = 1/4 ; copy n >= 2 targets t+1 in [3(n-1)+1, 3n-1] -> c = n-1, q = 1 - 0.5**(n-1)
    # copy 2: q = 0.5 ; copy 3: 0.75 ; copy 4: 0.875
    assert res["n"] == [1, 2, 3, 4]
    assert res["tp"] == pytest.approx([0.25, 0.5, 0.75, 0.875])
    # IP: every scored token rose above copy 1 from copy 2 on; IP(1) = 0 by definition
    assert res["ip"] == [0.0, 1.0, 1.0, 1.0]
    # WR: uniform copy 1 -> argmax is token 0 (first max), gold 2,3 -> 0 ; copy 2: q=0.5 > 0.5/3 -> 1
    assert res["wr"] == [0.0, 1.0, 1.0, 1.0]
    assert len(res["token_probs"]) == 4 and len(res["token_probs"][0]) == 2


def test_prefix_scores_every_position():
    model = CopyCountingLM(S=3)
    res = self_reinforcement_probe(model, [1, 2, 3], n_repeats=2, prefix_ids=[0])
    assert len(res["token_probs"][0]) == 3


def test_tiny_llama_ranges_and_average(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=64))
    res = self_reinforcement_probe(model, [5, 6, 7, 8, 9], n_repeats=6, prefix_ids=[1])
    for key in ("tp", "ip", "wr"):
        assert len(res[key]) == 6 and all(0.0 <= v <= 1.0 for v in res[key])
    assert res["ip"][0] == 0.0
    avg = multi_sentence_probe(model, [[5, 6, 7], [10, 11, 12, 13]], n_repeats=3)
    assert avg["num_sentences"] == 2 and len(avg["tp"]) == 3
    out = plot_probe({"baseline": res, "avg": avg}, tmp_path / "probe" / "tp.png")
    assert out.exists() and out.stat().st_size > 1000


def test_average_by_hand():
    a = {"n": [1, 2], "tp": [0.2, 0.4], "ip": [0.0, 1.0], "wr": [0.0, 0.5]}
    b = {"n": [1, 2], "tp": [0.4, 0.8], "ip": [0.0, 0.0], "wr": [1.0, 0.5]}
    avg = average_probe_results([a, b])
    assert avg["tp"] == pytest.approx([0.3, 0.6]) and avg["ip"] == [0.0, 0.5] and avg["wr"] == [0.5, 0.5]
    with pytest.raises(ValueError):
        average_probe_results([a, {"n": [1], "tp": [1], "ip": [0], "wr": [0]}])


def test_errors(tmp_path):
    model = CopyCountingLM(S=3)
    with pytest.raises(ValueError):
        self_reinforcement_probe(model, [1], n_repeats=2)  # 1 token and no prefix: nothing to score
    with pytest.raises(ValueError):
        self_reinforcement_probe(model, [1, 2], n_repeats=0)
    with pytest.raises(ValueError):
        plot_probe({}, tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_probe({"a": {"n": [1]}}, tmp_path / "x.png", metric="xx")
