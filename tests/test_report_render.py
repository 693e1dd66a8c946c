"""Rendering helpers of the compare report: span highlighting (CJK-safe), tables, JSON, atomic writes."""

import html
import json
import re

import numpy as np
import pytest

from entropy_reg.models.tiny import build_tiny_tokenizer
from entropy_reg.report.bootstrap import Interval
from entropy_reg.report.html import highlighted, sample_prompts, token_flags
from entropy_reg.report.markdown import fmt, table
from entropy_reg.report.output import atomic_write, to_json
from entropy_reg.report.rows import Row


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_token_flags_loop_tail_and_repeated_ngrams():
    ids = [9, 8, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]
    flags = token_flags(ids)
    assert flags[:2] == ["", ""]
    assert set(flags[2:]) == {"loop"}  # detect_loop: period-4 tail from index 2
    # a repeated 4-gram that is not a looping tail is marked "rep"
    flags = token_flags([1, 2, 3, 4, 7, 1, 2, 3, 4, 9, 5, 6, 8])
    assert flags[5:9] == ["rep"] * 4 and flags[:5] == [""] * 5 and flags[9:] == [""] * 4


def _strip_tags(s):
    return html.unescape(re.sub(r"<[^>]+>", "", s))


@pytest.mark.parametrize("text", [
    "你好世界。你好世界。你好世界。你好世界。",
    "a < b & c > d 'x' \"y\" <script>alert(1)</script> a < b & c > d",
    "for for for for for for for for",
])
def test_highlighted_text_is_escaped_and_complete(tok, text):
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    out = highlighted(tok, ids)
    assert "<script>" not in out
    assert "\ufffd" not in out  # no multi-byte character cut in half between spans
    assert _strip_tags(out) == tok.decode(ids, skip_special_tokens=True)
    if text.startswith("你好") or text.startswith("for"):
        assert 'class="loop"' in out


def _row(**kw):
    base = {"section": "s", "key": "k", "label": "a|b", "variant": "v", "baseline": 1.0, "candidate": 0.5,
            "interval": Interval(-0.5, -0.7, -0.3, 100)}
    base.update(kw)
    return Row(**base)


def test_markdown_table_escapes_pipes_and_formats():
    md = table([_row(), _row(key="z", baseline=0.0, candidate=0.0, interval=None)])
    assert "a\\|b" in md
    assert "| -0.5000 | [-0.7000, -0.3000] | -50.0% |" in md
    assert md.count("### s") == 1  # one section heading
    assert fmt(None) == "—" and fmt(float("nan")) == "—" and fmt(2.5e-5) == "2.500e-05"


def test_row_dict_and_strict_json():
    d = _row().to_dict()
    assert d["diff"] == -0.5 and d["relative_pct"] == -50.0 and d["ci_low"] == -0.7
    text = to_json({"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(3), float("inf")]})
    assert json.loads(text) == {"a": None, "b": 1.5, "c": [3, None]}


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old", "utf-8")
    atomic_write(target, "new 中文")
    assert target.read_text("utf-8") == "new 中文"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_sample_prompts_spread_to_the_last_prompt():
    assert sample_prompts(5, 10) == [0, 1, 2, 3, 4]
    assert sample_prompts(24, 4) == [0, 8, 15, 23]
    assert sample_prompts(24, 1) == [0] and sample_prompts(3, 0) == []


def test_intro_paths_render_as_code_not_backticks():
    from entropy_reg.report.html import inline_markdown

    out = inline_markdown("baseline: `runs/a b/<x>/last.ckpt`; candidate: `c.ckpt`")
    assert out == "baseline: <code>runs/a b/&lt;x&gt;/last.ckpt</code>; candidate: <code>c.ckpt</code>"
    assert "`" not in out


def _fake_comparison(tok):
    """A Comparison-shaped object with the long unbroken runs real models produce, and all four classes."""
    from types import SimpleNamespace

    from entropy_reg.generation import parse_decoding
    from entropy_reg.report.generate import Runs

    texts = ["|" * 600, "9" * 500, "Return a[i][i][i]" + "[" * 300, "普通的句子。" * 40 + "很长" * 200,
             "https://example.com/" + "a" * 400]
    ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    classes = ["degenerate", "repetitive", "divergent", "healthy", "healthy"]

    def runs():
        return Runs(decoding=parse_decoding("greedy"), seeds=[0], n_prompts=len(texts), max_new_tokens=128,
                    eos_token_ids=[0], token_ids=ids, entropies=[[1.0] * len(x) for x in ids],
                    logprobs=[[-1.0] * len(x) for x in ids], texts=texts, hit_eos=[False] * len(texts))

    wide = Interval(-123456.7, -234567.8, 345678.9, 100)  # the widest cells: numbers in e-notation
    rows = [_row(key="k1", label="x" * 300, variant="y" * 400), _row(key="k2"),
            _row(key="k3", baseline=-123456.7, candidate=234567.8, interval=wide, reference=0.7,
                 baseline_vs_reference=wide, candidate_vs_reference=wide)]  # --reference adds 3 columns
    roles = ("baseline", "candidate", "reference")
    return SimpleNamespace(
        rows=rows, prompts=["p" * 700, "Explain", "请解释" * 100, "b", "c"],
        runs={"greedy": {role: runs() for role in roles}},
        per_sample={"greedy": {role: {"collapse_class": classes} for role in roles}},
    )


_WIDTH_SCRIPT = """<script>
window.addEventListener('load', function () {
  var m = document.createElement('pre'); m.id = 'check';
  m.textContent = 'SCROLL ' + document.documentElement.scrollWidth + ' VIEW ' + window.innerWidth +
    ' CODE ' + document.querySelectorAll('li code').length;
  document.body.appendChild(m);
});
</script></body>"""


def test_report_html_fits_1280px_in_headless_chromium(tok, tmp_path):
    import shutil
    import subprocess

    from entropy_reg.report.html import render

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the headless render check needs it")
    intro = "- baseline: `" + "runs/" * 60 + "last.ckpt`\n- candidate: `cand.ckpt`\n"
    page = render(_fake_comparison(tok), {}, tok, intro)
    assert "`" not in page.split("<h2>Metrics</h2>")[0]  # header paths are <code>, not literal backticks
    for badge in ("degenerate", "repetitive", "divergent", "healthy"):
        assert f'class="badge {badge}"' in page
    probe = tmp_path / "check.html"
    probe.write_text(page.replace("</body>", _WIDTH_SCRIPT), "utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=3000",
             "--window-size=1280,900"]
    dom = subprocess.run([exe, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    marker = dom.stdout.split('id="check">', 1)[1].split("<", 1)[0].split()
    scroll, view, codes = int(marker[1]), int(marker[3]), int(marker[5])
    assert view == 1280
    assert scroll <= view, f"report.html is {scroll} px wide in a {view} px window"
    assert codes == 2
