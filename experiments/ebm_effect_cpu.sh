#!/usr/bin/env bash
# Does the EBM help at CPU scale (docs/results.md, "Does the EBM help?")? MMVAE+, EBM-MMVAE+ and
# MOE-EBM, each with every training seed of SEEDS (config.seed; the dataset's seed unchanged),
# trained and evaluated by `main.py --config=configs/polymnist_cpu.py:<model>` stopped at 1,000
# steps (ISSUE16: the quick start of that issue, 5 modalities; coherence on 1,000 test tuples,
# 5,000 joint samples), then one table with mean and spread over
# seeds (--mode=compare) and a look inside every MOE-EBM run's chains (inspect_chains.py).
#
#   OUT=/tmp/effect bash experiments/ebm_effect_cpu.sh                  # ~20-25 min a run here
#   OUT=/tmp/effect JOBS=2 SEEDS="0 1" MODELS="mmvaeplus moe_ebm" bash experiments/ebm_effect_cpu.sh
#
# JOBS runs that many trainings at once (2 on these 2 cores: 0.53 steps/s each for MMVAE+,
# against ~1.2 alone: no faster in all, but pairs finish together).
# EXTRA: more flags for every run (e.g. "--config.ebm.energy_l2=0"). A finished run is skipped
# (main.py resumes a workdir and skips an evaluated final step).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ebm_effect_cpu}
SEEDS=${SEEDS:-0 1}
MODELS=${MODELS:-mmvaeplus ebm_mmvaeplus moe_ebm}
JOBS=${JOBS:-1}
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python}  # The interpreter.
ISSUE16="--config.num_train_steps=1000 --config.eval_every_steps=500"
mkdir -p "$OUT"
export OUT EXTRA PYTHON ISSUE16
for seed in $SEEDS; do for model in $MODELS; do echo "$model $seed"; done; done |
  xargs -P "$JOBS" -L1 bash -c '
    echo "$0 seed $1 $(date +%T)"
    # shellcheck disable=SC2086
    "$PYTHON" main.py --config="configs/polymnist_cpu.py:$0" --workdir="$OUT/$0_s$1" \
      --config.seed="$1" $ISSUE16 $EXTRA > "$OUT/$0_s$1.log" 2>&1 || echo "$0 seed $1 FAILED: $OUT/$0_s$1.log"'
workdirs=()
for model in $MODELS; do for seed in $SEEDS; do workdirs+=("--workdir=$OUT/${model}_s$seed"); done; done
"$PYTHON" main.py --mode=compare "${workdirs[@]}" --compare_dir="$OUT/compare" > "$OUT/compare.log" 2>&1 \
  && cat "$OUT/compare/comparison.md" || { echo "compare failed:"; tail -5 "$OUT/compare.log"; }
for seed in $SEEDS; do
  case " $MODELS " in *" moe_ebm "*) ;; *) break ;; esac
  # shellcheck disable=SC2086
  "$PYTHON" experiments/inspect_chains.py --config=configs/polymnist_cpu.py:moe_ebm $ISSUE16 $EXTRA \
    --workdir="$OUT/moe_ebm_s$seed" --out="$OUT/inside_moe_ebm_s$seed" --num_test=500 \
    --sweep_steps=2,5,10 --sweep_step_sizes=0.03,0.1 > "$OUT/inside_moe_ebm_s$seed.log" 2>&1 \
    || echo "inspect_chains failed: $OUT/inside_moe_ebm_s$seed.log"
done
