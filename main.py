r"""moe_ebm_jax command line.

  python main.py --config=configs/polymnist.py:moe_ebm --workdir=/tmp/moe_ebm   # train
  python main.py --config=configs/polymnist.py --mode=prepare
  python main.py --config=configs/smoke.py:moe_ebm --config.data.mnist=/path/mnist.npz --mode=prepare

The config argument after ':' picks the model; any field can be overridden with
--config.<field>=<value> (type-checked).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/polymnist.py:moe_ebm.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs); used by the '
                               'training and evaluation modes.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'prepare'],
                          'train: train (resuming a run in --workdir) and evaluate; '
                          'prepare: only build PolyMNIST into config.data.data_dir.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  config_lib.validate(config)
  logging.info('Config:\n%s', config)
  if _MODE.value == 'prepare':
    input_pipeline.prepare(config.data)
  elif _MODE.value == 'train':
    if not _WORKDIR.value:
      raise app.UsageError('--workdir is required for --mode=train.')
    train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
