"""``entropy-reg compare --reference``: a third model in every table and plot, on tiny models end to end."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from tiny_compare import FAST, PROMPTS, one_thread, write_compare_inputs  # noqa: F401 (autouse fixture)

from entropy_reg import cli as top_cli
from entropy_reg.report import generate as generate_mod
from entropy_reg.report.cli import main

# matplotlib's default colour cycle (plot_probe draws one line per model in this order) and plots.COLORS.
LINE_COLORS = {"baseline": (0x1F, 0x77, 0xB4), "candidate": (0xFF, 0x7F, 0x0E), "reference": (0x2C, 0xA0, 0x2C)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_compare_inputs(tmp_path_factory.mktemp("ref_models"), {"a": 0, "b": 1, "c": 2})


@pytest.fixture(scope="module")
def ref_report(models, tmp_path_factory):
    """Compare a (baseline) and b (candidate) with c as the reference; counts generate calls per model."""
    out = tmp_path_factory.mktemp("ref_out")
    calls: dict[int, int] = {}
    real = generate_mod.generate_with_entropy

    def counting(model, *args, **kwargs):
        calls[id(model)] = calls.get(id(model), 0) + 1
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate_mod, "generate_with_entropy", counting)
        rc = top_cli.main(["compare", "--baseline", models["a"], "--candidate", models["b"], "--reference",
                           models["c"], "--prompts", models["prompts"], "--out", str(out), *FAST])
    assert rc == 0
    return out, calls


def _metrics(out):
    return json.loads((out / "metrics.json").read_text("utf-8"))


def test_every_row_has_the_reference_and_its_paired_cis(ref_report):
    out, _ = ref_report
    data = _metrics(out)
    assert data["config"]["reference"].endswith("/c")
    with_ci = 0
    for r in data["rows"]:
        if r["key"] == "perplexity_ratio":  # a ratio against the baseline: no reference value
            assert "reference" not in r
            continue
        assert r["reference"] is not None, r
        for role in ("baseline", "candidate"):
            assert r[f"{role}_minus_reference"] == pytest.approx(r[role] - r["reference"], abs=1e-12)
            low, high = r[f"{role}_minus_reference_ci_low"], r[f"{role}_minus_reference_ci_high"]
            if r["key"] == "uniq_seq":
                assert low is None and high is None  # a count: no CI, as for candidate - baseline
            elif low is not None:
                assert low <= high
                with_ci += 1
    assert with_ci > 40  # generation (2 decodings), held-out and probe rows all carry both CIs
    # the candidate - baseline columns keep their meaning
    row = next(r for r in data["rows"] if r["key"] == "seq_rep_4")
    assert row["diff"] == pytest.approx(row["candidate"] - row["baseline"])
    assert set(data["heldout"]) == set(data["probe"]) == {"baseline", "candidate", "reference"}
    assert set(data["samples"]["top_p"]) == {"baseline", "candidate", "reference"}
    assert data["samples"]["top_p"]["reference"]["seeds"] == [0, 1]
    assert len(data["per_sample"]["top_p"]["reference"]["entropy_mean"]) == 2 * len(PROMPTS)


def test_reference_costs_one_more_models_generation(ref_report):
    _, calls = ref_report
    # 3 models, each: greedy (1 seed) + top_p (2 seeds), 2 batches of prompts -> 6 calls, no more
    assert sorted(calls.values()) == [6, 6, 6]


def _images(page: str) -> dict[str, np.ndarray]:
    found = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    return {name: np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")) for name, b64 in found}


def _has_color(img: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(img.astype(int) - np.asarray(rgb)).sum(axis=-1) <= 6).sum() >= 20)


def test_html_probe_plot_has_three_lines(ref_report):
    out, _ = ref_report
    page = (out / "report.html").read_text("utf-8")
    images = _images(page)
    assert set(images) == {"entropy_hist.png", "entropy_by_position.png", "probe_tp.png"}
    probe = images["probe_tp.png"]
    for role, rgb in LINE_COLORS.items():
        assert _has_color(probe, rgb), f"no {role} line in the TP(n) plot"
    # (the histograms are drawn half transparent, so only the line plot has the pure colour)
    assert _has_color(images["entropy_by_position.png"], LINE_COLORS["reference"])
    # the PNG files next to report.html are the same plots
    assert np.array_equal(np.asarray(Image.open(out / "probe_tp.png").convert("RGB")), probe)


def test_tables_and_samples_show_the_reference(ref_report):
    out, _ = ref_report
    page = (out / "report.html").read_text("utf-8")
    assert "<th>reference</th><th>base − ref [95% CI]</th><th>cand − ref [95% CI]</th><th>variant</th>" in page
    assert "<th>prompt</th><th>baseline</th><th>candidate</th><th>reference</th>" in page
    md = (out / "report.md").read_text("utf-8")
    assert "- reference: `" in md
    assert "| metric | baseline | candidate | difference | 95% CI | rel. | reference | base − ref [95% CI] |" in md


def test_reference_equal_to_baseline_gives_exact_zeros(models, tmp_path):
    # The reference is model a again, through the checkpoint loader: identical prompts, seeds and
    # held-out text make every baseline - reference difference exactly 0 (and its CI [0, 0]).
    main(["--baseline", models["a"], "--candidate", models["b"], "--reference", models["ckpt"], "--decoding",
          "greedy", "--prompts", models["prompts"], "--out", str(tmp_path), *FAST])
    rows = _metrics(tmp_path)["rows"]
    assert rows
    for r in rows:
        if r["key"] == "perplexity_ratio":
            continue
        assert r["baseline_minus_reference"] == pytest.approx(0.0, abs=1e-9), r
        assert r["candidate_minus_reference"] == pytest.approx(r["diff"], abs=1e-9), r
        if r["baseline_minus_reference_ci_low"] is not None:
            assert r["baseline_minus_reference_ci_low"] == pytest.approx(0.0, abs=1e-9)
            assert r["baseline_minus_reference_ci_high"] == pytest.approx(0.0, abs=1e-9)
            assert r["candidate_minus_reference_ci_low"] == pytest.approx(r["ci_low"], abs=1e-9)


def test_missing_reference_exits_2_naming_it(models, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([models["a"], models["b"], "--reference", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
              *FAST])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reference model not found" in err[0] and "nope" in err[0]
    assert not (tmp_path / "o" / "report.html").exists()
