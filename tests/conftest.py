"""Test-wide environment: offline, no W&B account, quiet, reproducible."""

import os

# Never reach a hub (a miss would otherwise retry for ~30 s) and never prompt for a W&B login.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
