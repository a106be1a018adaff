#!/usr/bin/env bash
# The checks that need an accelerator, in one run: the benchmark suite at paper scale, the input
# pipeline with the paper config's workers, and the tests whose code paths differ there (conv
# formulations, Langevin, training: resume, divergence, sharding). Run from the repository root
# on a GPU or TPU host with the package installed; writes JSON and logs to $OUT.
#
#   OUT=/tmp/accel bash benchmarks/accelerator_check.sh
#   SUITE_S=300 TESTS_S=300 DATA_DIR=/path/to/tfds OUT=... bash benchmarks/accelerator_check.sh
#
# DATA_DIR: a built PolyMNIST (built there if missing, from MNIST: a verified .npz, for a machine
# without a package registry; unset, moe_ebm_jax/mnist.py's own sources). TEST_DATA: the tests'
# MOE_EBM_JAX_TEST_DATA (tests/conftest.py), if set. Each part has its own time limit, so a slow
# part does not hide the others.
set -uo pipefail
OUT=${OUT:-/tmp/accelerator_check}
DATA_DIR=${DATA_DIR:-/tmp/accelerator_check_tfds}
MNIST=${MNIST:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 2
(python3 -c "from moe_ebm_jax import polymnist; polymnist.builder(data_dir='$DATA_DIR', mnist_path='$MNIST' or None).download_and_prepare()" \
  > "$OUT/build.log" 2>&1) &
build=$!
echo "suite $(date +%T)"
timeout "${SUITE_S:-300}" python3 benchmarks/suite.py --scales=paper \
  --paper_models=mmvaeplus,moe_ebm --sections=matmul,train,langevin,ebm_overhead,generation,fid \
  --steps=20 --warmup=3 --repeats=10 --json_out="$OUT/suite.json" > "$OUT/suite.log" 2>&1
echo "suite rc=$?"; grep -E '^(matmul|train|langevin|ebm_overhead|fid):' "$OUT/suite.log"
wait $build || { echo "dataset build failed:"; tail -5 "$OUT/build.log"; }
timeout 120 python3 benchmarks/suite.py --scales=paper --sections=input_pipeline \
  --data_dir="$DATA_DIR" --json_out="$OUT/input_pipeline.json" 2>&1 | grep 'Input pipeline'
echo "tests $(date +%T)"
MOE_EBM_JAX_TEST_DATA=${TEST_DATA:-} timeout -s INT "${TESTS_S:-300}" python3 -m pytest -q \
  -p no:cacheprovider --tb=short tests/test_conv.py tests/test_langevin.py tests/test_train.py \
  > "$OUT/tests.log" 2>&1
echo "tests rc=$?"; tail -12 "$OUT/tests.log"
