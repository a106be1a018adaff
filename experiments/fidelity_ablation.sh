#!/usr/bin/env bash
# The fidelity ablation of docs/results.md: MMVAE+ with the paper's settings (AMSGrad 1e-3,
# constant beta 2.5, no warm-up), cross coherence at steps 500, 1,000, 1,500, for the code before
# the fidelity fixes, with the optimiser fixed, and with every fix. Each run under its own time
# limit; one JSON per run in $OUT.
#
#   OUT=/tmp/ablation SCALE=cpu D=/path/to/data bash experiments/fidelity_ablation.sh    # this CPU: ~25 min a run
#   OUT=/tmp/ablation SCALE=paper D=/path/to/data bash experiments/fidelity_ablation.sh  # paper widths, for a GPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fidelity_ablation}
SCALE=${SCALE:-cpu}
LIMIT=${LIMIT:-2400}  # Seconds per run.
NUM_TEST=${NUM_TEST:-500}
ONLY=${ONLY:-before_fixes optimizer_fixed every_fix}  # Which variants to run.
mkdir -p "$OUT"
case "$SCALE" in
  cpu) CONFIG=configs/polymnist_cpu.py:mmvaeplus ;;
  paper) CONFIG=configs/polymnist.py:mmvaeplus ;;
  *) echo "SCALE must be cpu or paper" >&2; exit 2 ;;
esac
PAPER="--config.optim.amsgrad=True --config.optim.learning_rate=1e-3 --config.model.beta_warmup_steps=0"
DATA=${D:+--config.data.data_dir=$D}
declare -A VARIANTS=(
  [before_fixes]="--config.optim.implementation=optax --config.model.param_init=lecun --config.model.scale_eps=1e-6"
  [optimizer_fixed]="--config.model.param_init=lecun --config.model.scale_eps=1e-6"
  [every_fix]=""
)
status=0
for name in $ONLY; do
  echo "== $name ($SCALE)"
  # shellcheck disable=SC2086
  timeout "$LIMIT" python experiments/coherence_probe.py --config="$CONFIG" $PAPER ${VARIANTS[$name]} \
      $DATA --at=500,1000,1500 --num_test="$NUM_TEST" --json_out="$OUT/$name.json" \
      2>"$OUT/$name.log" | tail -6 || status=1
done
exit $status
