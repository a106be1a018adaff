r"""Trains a config for N steps and prints cross coherence at chosen steps: learning speed in one command.

  python experiments/coherence_probe.py --config=configs/polymnist_cpu.py:mmvaeplus \
      --at=500,1000,1500 --num_test=500 --config.data.data_dir=D --json_out=/tmp/probe.json

The training step is train.py's (same jitted function, same input pipeline, fresh state; no
checkpoints, no workdir). At each step in --at: cross coherence (MMVAE+ protocol, single
sources; pre- and post-LD for EBM models) on the first --num_test test tuples with the dataset's
cached coherence classifiers (trained on first use), optionally joint coherence over
--num_joint prior samples, and with --norms the gradient and Adam-update norms of each layer
group on the next training batch. Every --log_every steps a line with the loss terms, rate and
ETA (and the skipped steps, if any: after config.max_consecutive_bad_steps bad steps in a row
the probe stops with the reason). The JSON record (rewritten after each probe) holds the config,
every probe and the log.
Any config field can be overridden with --config.<field>=<value>.
"""

import collections
import contextlib
import json
import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import metric_logging
from moe_ebm_jax import model_state
from moe_ebm_jax import optimizers
from moe_ebm_jax import parallel
from moe_ebm_jax import train
from moe_ebm_jax.data import classifiers
from moe_ebm_jax.evaluators import coherence as coherence_lib
from moe_ebm_jax.evaluators import common
from moe_ebm_jax.vae import objectives

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file with model argument.')
_AT = flags.DEFINE_list('at', ['500', '1000', '1500'], 'Training steps at which to probe.')
_NUM_TEST = flags.DEFINE_integer('num_test', 500, 'First K test tuples for cross coherence.')
_NUM_JOINT = flags.DEFINE_integer('num_joint', 0, 'Prior samples for joint coherence (0: none).')
_NORMS = flags.DEFINE_bool('norms', False, 'Also print per-layer-group gradient/update norms.')
_LOG_EVERY = flags.DEFINE_integer('log_every', 50, 'Steps between loss lines.')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Write the record here (after every probe).')
_CLF_MAX_STEPS = flags.DEFINE_integer(
    'classifier_max_steps', None, 'Train the coherence classifiers for at most this many steps '
    '(cached under these settings; None: the library default). For quick tests only.')
_CLF_TEST_SUBSET = flags.DEFINE_integer(
    'classifier_test_subset', None, 'Score the classifiers on the first N test tuples only.')


def layer_groups(tree, depth: int = 4) -> dict[str, list]:
  """Leaves of a params-shaped tree grouped by the first `depth` keys of their path, e.g.
  'encoders/params/tower_z/block_1' (stacked over modalities)."""
  groups = collections.defaultdict(list)
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    keys = [getattr(k, 'key', getattr(k, 'name', str(k))) for k in path]
    groups['/'.join(str(k) for k in keys[:depth])].append(leaf)
  return groups


def group_norms(tree) -> dict[str, float]:
  return {name: float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves)))
          for name, leaves in layer_groups(tree).items()}


def make_norms_fn(config, model):
  """(state, images) -> {'grad': {group: norm}, 'update': ..., 'param': ...} for the VAE."""
  vae_tx, _ = optimizers.make_optimizers(config)

  @jax.jit
  def norms(state, images):
    beta = model.beta_at(state.step)

    def loss_fn(params):
      return objectives.get(model.objective).fn(
          model.vae, params, images, jax.random.fold_in(state.key, 12345), beta=beta,
          num_samples=model.num_samples, estimator=model.estimator,
          log_prior_z=model.log_prior_z(state.prior_params, beta))[0]
    grads = jax.grad(loss_fn)(state.vae_params)
    updates, _ = vae_tx.update(grads, state.vae_opt_state, state.vae_params)
    return grads, updates

  def run(state, images):
    grads, updates = norms(state, images)
    return {'grad': group_norms(grads), 'update': group_norms(updates),
            'param': group_norms(state.vae_params)}

  return run


def main(argv):
  del argv
  log_setup.setup()  # Dependencies' INFO chatter off, as main.py does.
  config = _CONFIG.value
  at = sorted({int(s) for s in _AT.value})
  config.num_train_steps = at[-1]
  config_lib.validate(config)
  bank = classifiers.load_or_train(config.data, max_steps=_CLF_MAX_STEPS.value,
                                   test_subset=_CLF_TEST_SUBSET.value)
  model = model_state.make_model(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_divides(
      {k: config[k] for k in ('batch_size', 'eval_batch_size')}, jax.device_count())
  steps = train.compile_steps(config, model, mesh)
  evaluator = coherence_lib.CoherenceEvaluator(
      common.Generators(model, config.eval_batch_size, config.eval.clip_for_coherence),
      bank.classify, input_pipeline.first_test_batches(config, _NUM_TEST.value),
      num_joint=_NUM_JOINT.value, cross_only=True)
  norms_fn = make_norms_fn(config, model) if _NORMS.value else None
  data = input_pipeline.train_iterator(config)
  state = steps['init'](parallel.replicate(jax.random.PRNGKey(config.seed), steps['replicated']))
  record = {'config': json.loads(config.to_json_best_effort()), 'at': at,
            'num_test': _NUM_TEST.value, 'num_joint': _NUM_JOINT.value,
            'classifier_accuracies': [round(a, 4) for a in bank.accuracies],
            'probes': [], 'log': []}

  def write():
    if _JSON_OUT.value:
      with open(_JSON_OUT.value, 'w') as f:
        json.dump(record, f, indent=1)

  progress = metric_logging.ProgressLogger(at[-1], 0, batch_size=config.batch_size,
                                           every_steps=_LOG_EVERY.value, every_seconds=None)
  start = time.time()
  train_seconds = 0.0
  with contextlib.closing(data):
    for step in range(1, at[-1] + 1):
      t0 = time.time()
      batch = next(data)
      state, metrics = steps['train'](state, parallel.global_batch(batch['x'], steps['batch']))
      if step % _LOG_EVERY.value == 0 or step in at:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        skipped = int(state.skipped_steps)
        progress.update(step, {**metrics, **({'skipped': skipped} if skipped else {})})
        record['log'].append({'step': step, **metrics, 'skipped_steps': skipped})
        # Skipped steps leave the state as it was: a run stuck on them learns nothing, and its
        # coherence would read as slow learning. Stopped as train.py stops (no restore here).
        if int(state.bad_steps) >= config.max_consecutive_bad_steps:
          write()
          raise SystemExit(
              f'Stopped at step {step}: {int(state.bad_steps)} bad steps in a row '
              f'({train.describe_divergence(state)}); {skipped} skipped in all. The probe would '
              'measure a model that no longer trains (config.max_consecutive_bad_steps).')
      train_seconds += time.time() - t0
      if step not in at:
        continue
      t0 = time.time()
      coherence = evaluator.run(state, jax.random.PRNGKey(config.seed + 2))
      probe = {'step': step, 'train_seconds': round(train_seconds, 1),
               'skipped_steps': int(state.skipped_steps)}
      for tag in ('q', 'pre_ld', 'post_ld'):
        if tag in coherence:
          probe[f'cross_coherence_{tag}'] = round(coherence[tag]['cross_coherence'], 4)
          probe[f'matrix_{tag}'] = coherence[tag]['cross_coherence_matrix']
      if 'joint_coherence' in coherence:
        probe['joint_coherence'] = round(coherence['joint_coherence'], 4)
      if norms_fn is not None:
        images = parallel.global_batch(next(data)['x'], steps['batch'])
        probe['norms'] = norms_fn(state, images)
      probe['eval_seconds'] = round(time.time() - t0, 1)
      record['probes'].append(probe)
      write()
      summary = {k: v for k, v in probe.items() if not k.startswith(('matrix', 'norms'))}
      print(json.dumps(summary), flush=True)
      if norms_fn is not None:
        print(f'{"layer group":48s} {"|grad|":>10s} {"|update|":>10s} {"|param|":>10s}')
        for name in probe['norms']['grad']:
          print(f'{name:48s} {probe["norms"]["grad"][name]:10.3g} '
                f'{probe["norms"]["update"][name]:10.3g} {probe["norms"]["param"][name]:10.3g}')
  record['total_seconds'] = round(time.time() - start, 1)
  write()
  tags = [t for t in ('q', 'pre_ld', 'post_ld') if f'cross_coherence_{t}' in record['probes'][0]]
  print(f'\n{config.model.name}: cross coherence on the first {_NUM_TEST.value} test tuples '
        f'(chance 0.1)')
  print('| step | ' + ' | '.join(tags) + (' | joint |' if _NUM_JOINT.value else ' |'))
  print('|---' * (1 + len(tags) + bool(_NUM_JOINT.value)) + '|')
  for p in record['probes']:
    cells = [f"{p[f'cross_coherence_{t}']:.3f}" for t in tags]
    if _NUM_JOINT.value:
      cells.append(f"{p['joint_coherence']:.3f}")
    print(f"| {p['step']} | " + ' | '.join(cells) + ' |')
  logging.info('Probe finished in %s.', metric_logging.format_duration(record['total_seconds']))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
