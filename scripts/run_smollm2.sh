#!/usr/bin/env bash
# The SmolLM2-135M-Instruct experiment: the untouched base model (compare's reference) vs plain SFT vs
# each regularized recipe (token-level combined regularizers, DITTO repetition consistency, sequence-level
# unlikelihood, all of them), same data, steps and seeds, through `entropy-reg compare --reference`.
# CPU only. Each training is 40 steps of 4 x 128 tokens; see README "Results" for measured wall times.
#
#   bash scripts/run_smollm2.sh                       # seeds 0 1 2, every recipe
#   bash scripts/run_smollm2.sh --parallel 2 --threads 1 --compare-arg=--decoding=greedy
#       # what the README's 3-seed table ran: 1h40m on the 2-core CPU, shared with other jobs
#   SEEDS=0 bash scripts/run_smollm2.sh               # one seed
#   bash scripts/run_smollm2.sh --compare-arg=--decoding=greedy   # extra run_experiment.py options
#
# Resumable: finished trainings and comparisons are skipped, so an interrupted run continues.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0 1 2}
# shellcheck disable=SC2086
exec "$PY" scripts/run_experiment.py --model smollm2 \
  --candidate recipes/smollm2-135m/ditto.yaml --candidate recipes/smollm2-135m/combined.yaml \
  --candidate recipes/smollm2-135m/seq_ul.yaml --candidate recipes/smollm2-135m/full.yaml \
  --seeds $SEEDS --out "${OUT:-runs/main/smollm2}" "$@"
