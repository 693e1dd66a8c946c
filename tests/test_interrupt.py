"""Ctrl-C keeps the work: `entropy-reg fit` stops after the step under way, saves it, flushes, exits 130."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _start_fit(tmp_path: Path, *extra: str) -> subprocess.Popen:
    extra_config = tmp_path / "run.yaml"
    extra_config.write_text(f"""
trainer:
  max_steps: 100000
  limit_val_batches: 0
  log_every_n_steps: 1000
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {tmp_path / 'logs'}, name: run}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {tmp_path / 'ckpt'}, save_last: true, save_top_k: 0, every_n_train_steps: 1000}}
    - class_path: entropy_reg.callbacks.ProgressLog
      init_args: {{every_n_steps: 1}}
data:
  init_args: {{max_records: 64, batch_size: 4, max_length: 32}}
""")
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "entropy_reg", "fit", "--config", str(ROOT / "recipes" / "tiny" / "baseline.yaml"),
           "--config", str(extra_config), *extra]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_after(proc: subprocess.Popen, steps: int, timeout: float = 600) -> tuple[str, str]:
    """Send SIGINT once ProgressLog printed step ``steps``; the process's (stdout, stderr) after it exits."""
    seen = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        match = re.search(r"step (\d+)/", line)
        if match and int(match.group(1)) >= steps:
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "no progress lines"
    else:
        pytest.fail("fit ended before the interrupt:\n" + "".join(seen) + proc.stderr.read())
    out, err = proc.communicate(timeout=timeout)
    return "".join(seen) + out, err


def test_ctrl_c_saves_the_step_reached_flushes_and_exits_130(tmp_path):
    proc = _start_fit(tmp_path)
    out, err = _interrupt_after(proc, 3)
    assert proc.returncode == 130, err[-3000:]
    found = re.search(r"entropy-reg: interrupted at step (\d+): checkpoint (\S+)", err)
    assert found, err[-3000:]
    step, ckpt = int(found.group(1)), found.group(2)
    assert step >= 3 and Path(ckpt) == tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == step
    # The line to resume: the same command with --ckpt_path of that checkpoint.
    resume = re.search(r"^resume with: (entropy-reg fit .*)$", err, re.M).group(1)
    assert "--config" in resume and resume.endswith(f"--ckpt_path {ckpt}")
    assert "Traceback" not in err
    # The open statistics window (log_every_n_steps 1000: never logged otherwise) reached the logger.
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("train/loss")]
    assert logged and int(logged[-1]["step"]) == step


def test_resume_from_the_interrupt_checkpoint_continues_at_its_step(tmp_path):
    proc = _start_fit(tmp_path)
    _, err = _interrupt_after(proc, 2)
    assert proc.returncode == 130, err[-3000:]
    step = int(re.search(r"interrupted at step (\d+)", err).group(1))
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    resumed = subprocess.run(
        [sys.executable, "-m", "entropy_reg", "fit", "--config", str(ROOT / "recipes" / "tiny" / "baseline.yaml"),
         "--config", str(tmp_path / "run.yaml"), "--trainer.max_steps", str(step + 2), "--ckpt_path", str(ckpt)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == step + 2


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def test_run_experiment_ctrl_c_stops_everything_reports_and_resumes(tmp_path):
    out = tmp_path / "exp"
    common = ["--model", "tiny", "--seeds", "0", "--parallel", "2", "--out", str(out), "--reference", "none",
              "--fit-arg=--data.init_args.max_records=64", "--fit-arg=--trainer.limit_val_batches=0",
              "--fit-arg=--data.init_args.max_length=32", "--fit-arg=--data.init_args.batch_size=4",
              "--compare-arg=--max-new-tokens=8", "--compare-arg=--seeds=1", "--compare-arg=--decoding=greedy",
              "--compare-arg=--max-heldout=4", "--compare-arg=--probe-sentences=2", "--compare-arg=--bootstrap=20",
              "--compare-arg=--max-samples=2"]
    script = [sys.executable, str(ROOT / "scripts" / "run_experiment.py")]
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*script, *common, "--max-steps", "100000"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, stepped = [], set()
    for line in proc.stdout:
        seen.append(line)
        match = re.search(r"^\s+(\w+) seed 0: step (\d+)/", line)
        if match and int(match.group(2)) >= 2:
            stepped.add(match.group(1))
        if stepped == {"baseline", "combined"}:
            proc.send_signal(signal.SIGINT)
            break
    else:
        pytest.fail("".join(seen))
    rest, _ = proc.communicate(timeout=600)
    text = "".join(seen) + rest
    assert proc.returncode == 130, text[-3000:]
    steps = {name: int(step) for name, step in re.findall(r"interrupted: (\w+) seed 0 at step (\d+)", text)}
    assert set(steps) == {"baseline", "combined"} and min(steps.values()) >= 2, text[-3000:]
    assert "not done:    compare combined seed 0" in text
    assert "resume with the same command: python scripts/run_experiment.py" in text
    assert not _processes_mentioning(str(out)), "a process the script started is still running"
    # The same command with the step count reached + 1 resumes both trainings from their checkpoints.
    target = max(steps.values()) + 1
    resumed = subprocess.run([*script, *common, "--max-steps", str(target)], cwd=ROOT, env=env, text=True,
                             capture_output=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for name, step in steps.items():
        assert f"{name} seed 0: resuming the interrupted training from step {step}" in resumed.stdout
    assert (out / "compare" / "combined" / "seed0" / "metrics.json").is_file()
