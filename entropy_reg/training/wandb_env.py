"""W&B without an account: offline mode when no API key is configured.

:func:`configure_wandb_env` switches W&B to offline mode when no API key is configured (no
``WANDB_API_KEY`` and no netrc entry for the W&B host), so a run never prompts for a login and never
crashes for lack of one; the run is written under ``<save_dir>/wandb/`` and can be uploaded later with
``wandb sync``. The CLI calls it before any logger is built; call it yourself before creating a
``WandbLogger`` in your own scripts.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from urllib.parse import urlparse

from entropy_reg.training.ranks import rank_zero_warn

_DEFAULT_WANDB_HOST = "https://api.wandb.ai"
_OFFLINE_MODES = ("offline", "dryrun", "disabled")


def wandb_api_key_configured(environ: Mapping[str, str] | None = None) -> bool:
    """True when W&B could authenticate without prompting: ``WANDB_API_KEY`` or a netrc entry."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or _DEFAULT_WANDB_HOST).hostname or "api.wandb.ai"
    candidates = [env.get("NETRC")] if env.get("NETRC") else []
    candidates += [os.path.expanduser("~/.netrc"), os.path.expanduser("~/_netrc")]
    for path in candidates:
        if not path or not os.path.isfile(path):
            continue
        try:
            auth = netrc.netrc(path).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            # An unreadable netrc means W&B cannot read it either: treat as "no key".
            continue
        if auth and auth[2]:
            return True
    return False


def configure_wandb_env(environ: dict[str, str] | None = None) -> str:
    """Make W&B safe to start non-interactively; returns the resulting ``WANDB_MODE`` ("online" if unset).

    - ``WANDB_SILENT=true`` unless set (no banners in CI logs).
    - An explicit ``WANDB_MODE`` of offline/dryrun/disabled is kept.
    - Without an API key, ``WANDB_MODE=offline`` is forced, even over an explicit ``online``: W&B
      would otherwise prompt for a key or fail to start.
    """
    env = os.environ if environ is None else environ
    env.setdefault("WANDB_SILENT", "true")
    mode = env.get("WANDB_MODE", "")
    if mode in _OFFLINE_MODES:
        return mode
    if not wandb_api_key_configured(env):
        if mode == "online":
            rank_zero_warn("WANDB_MODE=online but no W&B API key is configured: logging offline instead.")
        env["WANDB_MODE"] = "offline"
        return "offline"
    return mode or "online"


def wandb_available() -> bool:
    try:
        import wandb  # noqa: F401
    except Exception:  # a broken install raises more than ImportError
        return False
    return True
