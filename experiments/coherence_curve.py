r"""Cross coherence of every kept checkpoint of a run: the convergence curve, read after training.

  python experiments/coherence_curve.py --config=configs/polymnist_cpu.py:moe_ebm,long \
      --config.data.data_dir=D --workdir=/tmp/poly_long/moe_ebm_s0 --num_test=500

The run must keep the checkpoints it should be read at (the ',long' variant keeps every 250-step
one). At each kept step: cross coherence (MMVAE+ protocol, single sources; pre- and post-LD for
models with a posterior chain) on the first --num_test test tuples with the dataset's cached
coherence classifiers, and the run's test loss at that step from its TensorBoard log. Written to
<workdir>/coherence_curve.json, one entry per step; steps already there are not recomputed, so a
run that trains on is read again in one command. The config must be the run's (same model keys
as a resume; experiments/table.py passes it).
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from moe_ebm_jax import log_setup
from moe_ebm_jax.data import classifiers
from moe_ebm_jax.data import coherence_scorers
from moe_ebm_jax.evaluators import curves

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The run\'s config file and model.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The run\'s folder (checkpoints, tensorboard).')
_NUM_TEST = flags.DEFINE_integer('num_test', 500, 'First K test tuples for cross coherence.')
_CLF_MAX_STEPS = flags.DEFINE_integer(
    'classifier_max_steps', None, 'As coherence_probe.py: classifiers trained at most this long '
    '(tests; the cache is keyed by it).')
_CLF_TEST_SUBSET = flags.DEFINE_integer(
    'classifier_test_subset', None, 'As coherence_probe.py: classifiers scored on N test tuples.')


def main(argv):
  del argv
  log_setup.setup()
  config = _CONFIG.value
  if _CLF_MAX_STEPS.value or _CLF_TEST_SUBSET.value:  # PolyMNIST's classifiers, trained short.
    classify, scored = classifiers.load_or_train(
        config.data, max_steps=_CLF_MAX_STEPS.value, test_subset=_CLF_TEST_SUBSET.value
    ).classify, None
  else:
    scorer = coherence_scorers.make_scorer(config)
    classify, scored = scorer.classify, scorer.scored
  for point in curves.coherence_curve(config, _WORKDIR.value, _NUM_TEST.value, classify, scored):
    print(json.dumps(point), flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
