r"""moe_ebm_jax command line.

  python main.py --config=configs/polymnist.py:moe_ebm --workdir=/tmp/moe_ebm   # train, evaluate
  python main.py --config=configs/polymnist.py:moe_ebm --workdir=/tmp/moe_ebm --mode=eval  # again
  python main.py --config=configs/polymnist.py --mode=prepare
  python main.py --config=configs/smoke.py:moe_ebm --config.data.mnist=/path/mnist.npz --mode=prepare
  python main.py --mode=compare --workdir=/tmp/mmvaeplus --workdir=/tmp/moe_ebm --compare_dir=/tmp/cmp
  python main.py --config=configs/polymnist.py:mmvaeplus --workdir=/tmp/mmvaeplus --mode=fit_prior \
      --config.posthoc.prior=gmm   # a post-hoc prior fitted to q(z | X), then evaluated with

The config argument after ':' picks the model; any field can be overridden with
--config.<field>=<value> (type-checked).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from moe_ebm_jax import config_lib
from moe_ebm_jax import evaluation
from moe_ebm_jax import fit_prior
from moe_ebm_jax import log_setup
from moe_ebm_jax import train
from moe_ebm_jax.data import classifiers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.evaluators import comparison

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/polymnist.py:moe_ebm.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_multi_string(
    'workdir', None, 'Run directory (checkpoints, logs): one for train and eval; repeat it once '
    'per run for compare.')
_COMPARE_DIR = flags.DEFINE_string('compare_dir', 'comparison',
                                   'Where --mode=compare writes comparison.md, .json and .png.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'prepare', 'train_classifiers', 'compare', 'fit_prior'],
    'train: train (resuming a run in --workdir), with periodic test loss and sample grids, '
    'then the evaluation of --mode=eval of the final step (config.eval.at_end_of_training); '
    'eval: coherence and figures of the latest checkpoint in --workdir (<workdir>/eval; with '
    'config.posthoc.prior set, with that fitted prior into <workdir>/eval_posthoc_<prior>); '
    'fit_prior: fit config.posthoc.prior to the latest checkpoint\'s q(z | X) on the train '
    'split, save it beside the checkpoint and evaluate with it; '
    'prepare: only build PolyMNIST into config.data.data_dir; '
    'train_classifiers: train (or load) the coherence classifiers of the dataset; '
    'compare: the evaluated runs of every --workdir in one table (the paper\'s Table 1 layout, '
    'its numbers beside ours) and a plot, in --compare_dir (no --config needed).')
_DEBUG_LOGS = flags.DEFINE_bool(
    'debug_logs', False, 'Show what is hidden by default: the INFO lines of orbax, grain, '
    'TensorFlow Datasets and JAX, TFDS progress bars, absl\'s full prefix (date, thread, '
    'file:line) and the whole config at the start.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  log_setup.setup(debug=_DEBUG_LOGS.value)
  workdirs = _WORKDIR.value or []
  if _MODE.value == 'compare':
    try:
      result = comparison.compare(workdirs, _COMPARE_DIR.value)
    except comparison.CompareError as e:  # Bad input, not a bug: the message, no traceback.
      raise SystemExit(f'--mode=compare: {e}') from None
    print(result['table'])
    logging.info('Comparison of %d runs written to %s (plot: %s).', len(workdirs),
                 _COMPARE_DIR.value, result['plot'] or "none: pip install '.[plot]'")
    return
  config = _CONFIG.value
  if config is None:
    raise app.UsageError(f'--config is required for --mode={_MODE.value}.')
  try:
    _run(config, workdirs)
  except datasets.DataError as e:  # The data, not a bug: the message, no traceback.
    raise SystemExit(f'Data error in dataset {config.data.name!r}: {e}') from None


def _run(config, workdirs: list[str]) -> None:
  try:
    config_lib.validate(config)
  except datasets.DataError:
    raise
  except ValueError as e:  # A config key's value: the message says which, no traceback.
    raise SystemExit(str(e)) from None
  if _DEBUG_LOGS.value:
    logging.info('Config:\n%s', config)
  else:
    logging.info('%s (every field: --debug_logs, or config.json in the workdir).',
                 config_lib.summary(config))
  if _MODE.value == 'prepare':
    datasets.prepare(config.data)
  elif _MODE.value == 'train_classifiers':
    classifiers.load_or_train(config.data)
  else:
    if len(workdirs) != 1:
      raise app.UsageError(f'--mode={_MODE.value} takes exactly one --workdir, got '
                           f'{len(workdirs)}.')
    if _MODE.value == 'train':
      try:
        train.train_and_evaluate(config, workdirs[0])
      except train.DivergenceError as e:  # Reported and handled, not a bug: no traceback.
        raise SystemExit(f'Training stopped: {e}') from None
    else:
      if _MODE.value == 'fit_prior' and config.posthoc.prior is None:
        raise SystemExit('--mode=fit_prior needs --config.posthoc.prior=<one of '
                         f'{sorted(fit_prior.posthoc.FITTERS)}>.')
      try:
        if _MODE.value == 'fit_prior':
          fit_prior.fit(config, workdirs[0])
        elif config.posthoc.prior is not None:
          fit_prior.evaluate(config, workdirs[0])
        else:
          evaluation.evaluate_run(config, workdirs[0])
      except FileNotFoundError as e:  # Nothing to evaluate yet: what to run, no traceback.
        raise SystemExit(f'--mode={_MODE.value}: {e}') from None


if __name__ == '__main__':
  app.run(main)
