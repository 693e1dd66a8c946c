"""W&B without an account or without a network: the run never prompts and never hangs.

- WANDB_MODE unset, no key: offline, silently; WANDB_MODE=online, no key: offline with a warning.
  Both through ``python -m entropy_reg fit`` with stdin closed and a timeout, the recipe's WandbLogger
  switched to ``offline: false`` so nothing but the environment decides.
- a key but an unreachable host: the logger is switched to offline before wandb.init would wait ~90 s.
"""

from __future__ import annotations

import pytest
from test_bad_inputs import COMBINED, run_fit

from entropy_reg import cli as cli_mod

pytestmark = [pytest.mark.timeout(240), pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")]


def no_key_env(tmp_path, mode: str | None) -> dict:
    env = {"WANDB_API_KEY": "", "NETRC": str(tmp_path / "no-netrc"), "HOME": str(tmp_path),
           "WANDB_DIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    env["WANDB_MODE"] = mode if mode is not None else ""  # "" == unset for W&B and configure_wandb_env
    return env


@pytest.mark.slow
@pytest.mark.parametrize("mode", [None, "online"])
def test_no_wandb_key_goes_offline_without_prompt(tmp_path, mode):
    # a login prompt would block until run_fit's timeout (150 s) kills the run
    out = run_fit(tmp_path, "--trainer.logger.init_args.offline", "false", env=no_key_env(tmp_path, mode), timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    warned = "no W&B API key is configured: logging offline" in out.stderr
    assert warned == (mode == "online")
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "no offline W&B run was written"


def test_unreachable_wandb_host_falls_back_to_offline(monkeypatch, tmp_path):
    assert not cli_mod._reachable("http://127.0.0.1:9", timeout=2.0)  # nothing listens on port 9
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with pytest.warns(UserWarning, match="unreachable: logging offline"):
        cli = cli_mod.EntropyRegCLI(
            args=["--config", COMBINED, "--data.max_records", "8", "--trainer.logger.init_args.offline", "false",
                  "--trainer.logger.init_args.save_dir", str(tmp_path)],
            run=False,
        )
    assert cli.trainer.logger._offline is True
