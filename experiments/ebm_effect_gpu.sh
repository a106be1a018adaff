#!/usr/bin/env bash
# Does the EBM help at the real width? MMVAE+ and MOE-EBM with the paper's settings
# (configs/polymnist.py: widths 64-128-256, batch 128, AMSGrad 1e-3, beta 2.5, 60 prior and 20
# posterior Langevin steps) trained for the same STEPS, cross coherence (pre- and post-LD for
# MOE-EBM) on the first NUM_TEST test tuples at each step of AT and joint coherence over
# NUM_JOINT prior samples, by experiments/coherence_probe.py. One JSON per model in $OUT, rewritten
# after every probe, so a run cut short by its time limit still leaves its numbers.
#
#   OUT=/tmp/effect bash experiments/ebm_effect_gpu.sh               # one H200: ~9.5 minutes
#   OUT=/tmp/effect SCALE=smoke bash experiments/ebm_effect_gpu.sh   # the same script on a CPU, seconds
#
# DATA_DIR: a built PolyMNIST (built there if missing, from MNIST: a verified .npz or IDX folder,
# for a machine without a package registry; unset, moe_ebm_jax/mnist.py's own sources). Time limits: BUILD_S, CLASSIFIERS_S, MMVAEPLUS_S, MOE_EBM_S (seconds, each part
# its own). MODELS: which of 'mmvaeplus moe_ebm' to run. PYTHON: the interpreter (python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ebm_effect}
SCALE=${SCALE:-paper}
DATA_DIR=${DATA_DIR:-/tmp/ebm_effect_tfds}
MNIST_FLAG=()
[ -n "${MNIST:-}" ] && MNIST_FLAG=(--config.data.mnist="$MNIST")
case "$SCALE" in
  # One H200, 2026-12-04 (jax 0.11.2): dataset build ~45 s, classifiers 31 s; MMVAE+ 51 s to its
  # step 100 (start-up and compile), then 30.5 steps/s, a probe 21 s (first) / ~12 s; MOE-EBM
  # 126 s to step 100, then 10.2 steps/s, first probe ~45 s. 1,000 steps fit its default
  # limits (~100 and ~280 s) and one 10-minute device call; AT=...,1500 needs two calls (MODELS=).
  paper) CONFIG=configs/polymnist.py; AT=${AT:-500,1000}; NUM_TEST=${NUM_TEST:-2000}
         NUM_JOINT=${NUM_JOINT:-2000}; EXTRA=() ;;
  smoke) CONFIG=configs/smoke.py; AT=${AT:-2,4}; NUM_TEST=${NUM_TEST:-16}; NUM_JOINT=${NUM_JOINT:-8}
         EXTRA=(--classifier_max_steps=2 --classifier_test_subset=32) ;;
  *) echo "SCALE must be paper or smoke" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 2
echo "build $(date +%T)"
timeout "${BUILD_S:-120}" "$PYTHON" main.py --config="$CONFIG:mmvaeplus" --mode=prepare \
  --config.data.data_dir="$DATA_DIR" "${MNIST_FLAG[@]}" > "$OUT/build.log" 2>&1 \
  || { echo "dataset build failed:"; tail -5 "$OUT/build.log"; exit 1; }
if [ "$SCALE" = paper ]; then  # Smoke scale: the probe trains 2-step classifiers itself.
  echo "classifiers $(date +%T)"
  timeout "${CLASSIFIERS_S:-150}" "$PYTHON" main.py --config="$CONFIG:mmvaeplus" \
    --mode=train_classifiers --config.data.data_dir="$DATA_DIR" > "$OUT/classifiers.log" 2>&1 \
    || { echo "classifier training failed:"; tail -5 "$OUT/classifiers.log"; exit 1; }
  grep -i 'accurac' "$OUT/classifiers.log" | tail -1
fi
status=0
for model in ${MODELS:-mmvaeplus moe_ebm}; do
  limit_var=$(echo "${model}_S" | tr '[:lower:]' '[:upper:]')
  limit=${!limit_var:-$([ "$model" = moe_ebm ] && echo 330 || echo 150)}
  echo "$model $(date +%T) (limit ${limit} s)"
  timeout "$limit" "$PYTHON" experiments/coherence_probe.py --config="$CONFIG:$model" \
    --config.data.data_dir="$DATA_DIR" "${MNIST_FLAG[@]}" --at="$AT" \
    --num_test="$NUM_TEST" --num_joint="$NUM_JOINT" --log_every=100 "${EXTRA[@]}" \
    --json_out="$OUT/$model.json" > "$OUT/$model.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || { echo "$model rc=$rc"; tail -3 "$OUT/$model.log"; status=1; }
  grep -E '^\| [0-9]' "$OUT/$model.log" | sed "s/^/$model /"
done
echo "done $(date +%T)"
exit $status
