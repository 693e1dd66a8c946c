"""End-to-end ``entropy-reg compare`` on tiny models (HF dirs and a Lightning-style checkpoint).

Small on purpose (2 CPU cores shared): a 1-layer, 32-wide Llama, 3 prompts (one Chinese), 10 new tokens,
200 bootstrap resamples. The headless-browser test renders report.html with Debian's ``chromium``.
"""

import json
import shutil
import subprocess

import pytest
from tiny_compare import FAST, PROMPTS, one_thread, write_compare_inputs  # noqa: F401 (autouse fixture)

from entropy_reg import cli as top_cli
from entropy_reg.report.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny HF dirs (different init seeds) and a checkpoint holding model A's weights."""
    return write_compare_inputs(tmp_path_factory.mktemp("cmp_models"), {"a": 0, "b": 1})


@pytest.fixture(scope="module")
def report(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp_out")
    # through the top-level `entropy-reg` dispatcher, as a user would call it
    rc = top_cli.main(["compare", "--baseline", models["a"], "--candidate", models["b"], "--prompts",
                       models["prompts"], "--out", str(out), *FAST])
    assert rc == 0
    return out


def test_writes_all_files(report):
    for name in ("report.md", "report.html", "metrics.json", "entropy_hist.png", "entropy_by_position.png",
                 "probe_tp.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    assert not list(report.glob(".*.tmp"))  # no temp file left behind


def test_metrics_json_content(report):
    data = json.loads((report / "metrics.json").read_text("utf-8"))
    keys = {(r["section"], r["key"]) for r in data["rows"]}
    for dec in ("greedy", "top_p"):
        for key in ("entropy_mean", "entropy_p10", "entropy_p50", "entropy_p90", "seq_rep_4", "seq_rep_2", "rep_2",
                    "rep_4", "distinct_2", "sentence_repetition", "degenerate_share", "eos_rate", "max_length_rate"):
            assert (dec, key) in keys
    assert {"perplexity", "perplexity_ratio", "rep_l", "wrep_l"} <= {k for _, k in keys}
    assert any(k == "tp_N" for _, k in keys)
    # per-sample values: 3 prompts x 1 seed (greedy) and x 2 seeds (top_p)
    assert len(data["per_sample"]["greedy"]["baseline"]["seq_rep_4"]) == 3
    assert len(data["per_sample"]["top_p"]["candidate"]["entropy_mean"]) == 6
    assert data["samples"]["top_p"]["baseline"]["seeds"] == [0, 1]
    for r in data["rows"]:
        if r["ci_low"] is not None:
            assert r["ci_low"] <= r["ci_high"]
    assert data["probe"]["baseline"]["n"] == [1, 2, 3]


def test_report_md_table_and_variants(report, capsys):
    md = (report / "report.md").read_text("utf-8")
    assert "| metric | baseline | candidate | difference | 95% CI |" in md
    assert "Welleck, per continuation" in md and "pooled: 1 - unique/total" in md
    assert "SimCTG's counting on token ids" in md and "| repetitive share |" in md


def test_identical_models_differ_by_exactly_zero(models, tmp_path, capsys):
    # checkpoint of A vs HF dir of A: same weights through two loaders -> paired differences are 0
    main([models["ckpt"], models["a"], "--prompts", models["prompts"], "--out", str(tmp_path), *FAST])
    stdout = capsys.readouterr().out
    assert "report:" in stdout and "| seq-rep-4 |" in stdout
    data = json.loads((tmp_path / "metrics.json").read_text("utf-8"))
    for r in data["rows"]:
        if r["key"] == "uniq_seq":
            continue
        assert r["diff"] == pytest.approx(0.0, abs=1e-9), r
        if r["ci_low"] is not None:
            assert r["ci_low"] <= 0.0 <= r["ci_high"] or r["ci_low"] == pytest.approx(0, abs=1e-9), r


@pytest.mark.slow  # starting the W&B service process alone takes ~10 s
def test_wandb_offline_run(models, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    main([models["a"], models["b"], "--prompts", models["prompts"], "--out", str(tmp_path / "o"), "--wandb",
          "--decoding", "greedy", *FAST])
    runs = list((tmp_path / "o" / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))


_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var m = document.createElement('pre'); m.id = 'check';
  m.textContent = 'IMAGES ' + ok + '/' + imgs.length + ' METRIC_ROWS ' +
    document.querySelectorAll('table.metrics tr[data-key]').length + ' SAMPLES ' +
    document.querySelectorAll('table.samples tr').length;
  document.body.appendChild(m);
});
</script></body>"""


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the headless render check needs it")
    return exe


def test_html_renders_in_headless_chromium(report, tmp_path):
    exe = _chromium()
    page = (report / "report.html").read_text("utf-8")
    assert "<script" not in page  # the report itself is script-free; the check is injected into a copy
    probe = tmp_path / "check.html"
    probe.write_text(page.replace("</body>", _CHECK_SCRIPT), "utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000"]
    dom = subprocess.run([exe, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="check"' in dom.stdout, dom.stdout[-2000:]
    marker = dom.stdout.split('id="check">', 1)[1].split("<", 1)[0].split()
    ok, total = map(int, marker[1].split("/"))
    assert total == 3 and ok == total  # entropy histogram, entropy by position, TP(n): all decoded
    assert int(marker[3]) >= 30  # metric rows present as table rows
    assert int(marker[5]) == 2 * (len(PROMPTS) + 1)  # two decodings x (header + prompts)
    assert "请解释" in dom.stdout  # CJK prompt survived escaping and encoding
    shot = tmp_path / "shot.png"
    res = subprocess.run([exe, *flags, "--window-size=1300,1800", f"--screenshot={shot}", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-2000:]
