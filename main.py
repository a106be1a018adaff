r"""moe_ebm_jax command line.

  python main.py --config=configs/polymnist.py:moe_ebm --workdir=/tmp/moe_ebm   # train
  python main.py --config=configs/polymnist.py:moe_ebm --workdir=/tmp/moe_ebm --mode=eval
  python main.py --config=configs/polymnist.py --mode=prepare
  python main.py --config=configs/smoke.py:moe_ebm --config.data.mnist=/path/mnist.npz --mode=prepare

The config argument after ':' picks the model; any field can be overridden with
--config.<field>=<value> (type-checked).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from moe_ebm_jax import classifiers
from moe_ebm_jax import config_lib
from moe_ebm_jax import evaluation
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/polymnist.py:moe_ebm.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs); used by the '
                               'training and evaluation modes.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'prepare', 'train_classifiers'],
    'train: train (resuming a run in --workdir), with periodic test loss and sample grids; '
    'eval: coherence and figures of the latest checkpoint in --workdir (<workdir>/eval); '
    'prepare: only build PolyMNIST into config.data.data_dir; '
    'train_classifiers: train (or load) the coherence classifiers of the dataset.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  config_lib.validate(config)
  logging.info('Config:\n%s', config)
  if _MODE.value == 'prepare':
    input_pipeline.prepare(config.data)
  elif _MODE.value == 'train_classifiers':
    classifiers.load_or_train(config.data)
  else:
    if not _WORKDIR.value:
      raise app.UsageError(f'--workdir is required for --mode={_MODE.value}.')
    if _MODE.value == 'train':
      train.train_and_evaluate(config, _WORKDIR.value)
    else:
      evaluation.evaluate_run(config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
