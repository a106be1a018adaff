"""Training: one jitted step updates the VAE and the EBM; data parallel over every device.

The step (`train_step`) computes the VAE loss and, for EBM models, the prior and posterior
Langevin chains and the EBM loss; takes both gradients; and applies both Optax updates, all in one
compiled program. It is pure: state in, state and metrics out.

Parallelism: params and optimiser states are replicated (NamedSharding(mesh, P())), the batch is
split over the mesh axis 'data' (P('data')); jax.jit partitions the step. The same code runs on
one CPU, every GPU of a host, or a TPU pod (multi-host via jax.distributed.initialize, each
process feeding its own shard of the batch).

Non-finite losses or gradients, or an energy beyond config.ebm.max_abs_energy, skip the update
inside the step and are counted; after config.max_consecutive_bad_steps in a row the run restores
the last good checkpoint (with a fresh random stream) or stops, saying what diverged; a checkpoint
restored config.max_restores times in a row, diverging again each time, stops the run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from moe_ebm_jax import checkpointing
from moe_ebm_jax import config_lib
from moe_ebm_jax import evaluation
from moe_ebm_jax import figures
from moe_ebm_jax import generation
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import metric_logging
from moe_ebm_jax import model_state
from moe_ebm_jax import optimizers
from moe_ebm_jax import parallel
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.latent import priors
from moe_ebm_jax.vae import objectives

Params = Any

# Why a step was skipped (bits of model_state.TrainState.last_bad_reason): the VAE's loss or
# gradients, the prior's (PriorUpdate.ok_loss), the prior's bounds (PriorUpdate.ok_bounds).
BAD_VAE, BAD_PRIOR, BAD_BOUNDS = 1, 2, 4


def observed_matrix(vae, observed) -> jax.Array | None:
  """A batch's observation mask {name: (B,) bool} -> (M, B) bool in the model's modality order;
  None (a complete batch) stays None."""
  if observed is None:
    return None
  return jnp.stack([jnp.asarray(observed[n], bool) for n in vae.names])


def _objective_kwargs(observed) -> dict:
  """Only incomplete batches pass `observed`: objectives without it (supports_incomplete=False,
  refused on incomplete data by the config check) keep working on complete ones."""
  return {} if observed is None else {'observed': observed}


def train_step(state: model_state.TrainState, x, observed=None, *, model: model_state.Model,
               vae_tx, prior_tx) -> tuple[model_state.TrainState, dict[str, jax.Array]]:
  """One update of the VAE and the prior. x: the batch's modalities {name: (B, *shape)};
  observed: incomplete data's mask {name: (B,) bool} (data/missing.py), or None."""
  key, k_vae, k_prior, k_pick, k_post = jax.random.split(jax.random.fold_in(state.key, state.step),
                                                        5)
  del key  # Keys derive from (state.key, step): resuming reproduces them exactly.

  beta = model.beta_at(state.step)
  prior = model.prior  # priors.py: the fixed prior, the EBM, or any registered one.
  extra = _objective_kwargs(observed_matrix(model.vae, observed))

  def vae_loss_fn(vae_params):
    return objectives.get(model.objective).fn(
        model.vae, vae_params, x, k_vae, beta=beta, num_samples=model.num_samples,
        estimator=model.estimator, log_prior_z=prior.log_prob(state.prior_params, beta), **extra)

  (vae_loss, aux), vae_grads = jax.value_and_grad(vae_loss_fn, has_aux=True)(state.vae_params)
  metrics = dict(aux.metrics)
  if model.beta_warmup_steps:
    metrics['beta'] = jnp.asarray(model.beta_at(state.step), jnp.float32)
  ok_vae = jnp.isfinite(vae_loss) & priors.all_finite(vae_grads)
  # The prior's own update (the EBM: prior and posterior chains, the EBM loss's gradient).
  update = priors.PriorUpdate(*prior.learn(
      state.prior_params, state.prior_state, (k_prior, k_pick, k_post), model.vae,
      state.vae_params, x, aux))
  metrics.update(update.metrics)

  ok = ok_vae & update.ok_loss & update.ok_bounds
  vae_updates, vae_opt_state = vae_tx.update(vae_grads, state.vae_opt_state, state.vae_params)
  prior_updates, prior_opt_state = prior_tx.update(update.grads, state.prior_opt_state,
                                                   state.prior_params)
  updated = (optax.apply_updates(state.vae_params, vae_updates), vae_opt_state,
             optax.apply_updates(state.prior_params, prior_updates), prior_opt_state,
             update.state)
  current = (state.vae_params, state.vae_opt_state, state.prior_params, state.prior_opt_state,
             state.prior_state)
  # A bad step leaves params, optimiser moments and the prior's state untouched (NaNs never
  # enter the state).
  vae_params, vae_opt_state, prior_params, prior_opt_state, prior_state = jax.tree.map(
      lambda new, old: jnp.where(ok, new, old), updated, current)
  reason = (jnp.where(ok_vae, 0, BAD_VAE) | jnp.where(update.ok_loss, 0, BAD_PRIOR) |
            jnp.where(update.ok_bounds, 0, BAD_BOUNDS)).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1, vae_params=vae_params, prior_params=prior_params,
      vae_opt_state=vae_opt_state, prior_opt_state=prior_opt_state, prior_state=prior_state,
      bad_steps=jnp.where(ok, 0, state.bad_steps + 1),
      skipped_steps=state.skipped_steps + (~ok).astype(jnp.int32),
      last_bad_reason=jnp.where(ok, state.last_bad_reason, reason))
  metrics['step_ok'] = ok.astype(jnp.float32)
  return new_state, metrics


def eval_step(state: model_state.TrainState, x, key: jax.Array, observed=None, *,
              model: model_state.Model) -> dict[str, jax.Array]:
  """Test loss of one batch (the model's own training objective, no update, the full beta):
  sums for averaging. observed: incomplete test data's mask {name: (B,) bool}, or None."""
  loss, aux = objectives.get(model.objective).fn(
      model.vae, state.vae_params, x, key, beta=model.beta, num_samples=model.num_samples,
      estimator='iwae' if model.estimator == 'dreg' else model.estimator,
      log_prior_z=model.log_prior_z(state.prior_params, model.beta),
      **_objective_kwargs(observed_matrix(model.vae, observed)))
  b = aux.post.z_loc.shape[1]
  return {'loss_sum': loss * b, 'recon_sum': aux.metrics['recon'] * b, 'count': jnp.float32(b)}


# ----------------------------------------------------------------------------- the loop


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  d = config.distributed
  if not (d.enabled or os.environ.get('JAX_COORDINATOR_ADDRESS')):
    return
  # CPU collectives across processes need an implementation (gloo ships with jaxlib); the
  # setting only concerns the CPU backend. No backend may be touched before initialize().
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=d.coordinator_address,
                             num_processes=d.num_processes, process_id=d.process_id)
  logging.info('Process %d of %d; %d local and %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def compile_steps(config: ml_collections.ConfigDict, model: model_state.Model,
                  mesh) -> dict[str, Any]:
  """jit-compiled step functions with their shardings (params replicated, batch split).

  'train_incomplete' and 'eval_incomplete' take the batch's observation mask as one more
  argument (split like the batch); jit compiles them only when incomplete data calls them, and
  the mask's pattern changing from batch to batch changes values, not the program."""
  vae_tx, prior_tx = optimizers.make_optimizers(config)
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P('data'))
  init = jax.jit(functools.partial(model_state.init_state, model, vae_tx, prior_tx),
                 out_shardings=replicated)
  step = jax.jit(functools.partial(train_step, model=model, vae_tx=vae_tx, prior_tx=prior_tx),
                 in_shardings=(replicated, batch), out_shardings=(replicated, replicated),
                 donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, model=model),
                     in_shardings=(replicated, batch, replicated), out_shardings=replicated)
  step_incomplete = jax.jit(
      functools.partial(train_step, model=model, vae_tx=vae_tx, prior_tx=prior_tx),
      in_shardings=(replicated, batch, batch), out_shardings=(replicated, replicated),
      donate_argnums=0)
  evaluate_incomplete = jax.jit(functools.partial(eval_step, model=model),
                                in_shardings=(replicated, batch, replicated, batch),
                                out_shardings=replicated)
  gen = jax.jit(functools.partial(generation.sample_grids, model=model,
                                  num_samples=config.num_image_samples),
                in_shardings=(replicated, replicated, replicated), out_shardings=replicated)
  return {'init': init, 'train': step, 'eval': evaluate, 'generate': gen,
          'train_incomplete': step_incomplete, 'eval_incomplete': evaluate_incomplete,
          'replicated': replicated, 'batch': batch}


def run_train_step(steps, state, batch):
  """One compiled training step on a host batch {'x': ...[, 'observed': ...]}: the incomplete
  data's step where the batch carries a mask, the complete data's (unchanged) otherwise."""
  x = parallel.global_batch(batch['x'], steps['batch'])
  if 'observed' not in batch:
    return steps['train'](state, x)
  return steps['train_incomplete'](state, x,
                                   parallel.global_batch(batch['observed'], steps['batch']))


def evaluate(config, state, steps, key) -> dict[str, float]:
  totals = {}
  ds = input_pipeline.eval_dataset(config, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  n_devices = jax.device_count()
  for i, batch in enumerate(ds):
    if config.num_eval_batches is not None and i >= config.num_eval_batches:
      break
    x = batch['x']
    if len(next(iter(x.values()))) * jax.process_count() % n_devices:
      continue  # The last partial batch does not split over devices; skip it.
    args = (state, parallel.global_batch(x, steps['batch']),
            parallel.replicate(jax.random.fold_in(key, i), steps['replicated']))
    if 'observed' in batch:
      out = steps['eval_incomplete'](*args, parallel.global_batch(batch['observed'],
                                                                  steps['batch']))
    else:
      out = steps['eval'](*args)
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = totals.get('count', 0.0)
  if not count:
    raise ValueError('evaluation saw no complete batch: lower eval_batch_size.')
  return {'test_loss': totals['loss_sum'] / count, 'test_recon': totals['recon_sum'] / count}


def write_samples(writer, config, model, state, steps, key, step: int) -> None:
  """TensorBoard grids of joint samples and of cross generation from each source, for
  datasets whose modalities are images of one shape (the others are shown by evaluation's
  figures)."""
  names = [s.name for s in model.vae.modalities]
  if len({s.shape for s in model.vae.modalities}) != 1 or model.vae.modalities[0].kind != 'image':
    return
  test = next(iter(input_pipeline.eval_dataset(config)))
  x = {n: a[:config.num_image_samples] for n, a in test['x'].items()}
  if len(x[names[0]]) < config.num_image_samples:
    return
  out = jax.device_get(steps['generate'](state, parallel.replicate(x, steps['replicated']),
                                         parallel.replicate(key, steps['replicated'])))
  images = np.stack([x[n] for n in names], axis=1)
  grids = {'samples/joint': figures.image_grid(
      np.stack([out['joint'][n] for n in names], axis=1))}
  for src, cross in enumerate(out['cross']):
    # Rows: test examples; first column the source image, then its decodes into every modality.
    tiles = np.concatenate([images[:, src:src + 1], np.stack([cross[n] for n in names], 1)], 1)
    grids[f'samples/cross_from_{names[src]}'] = figures.image_grid(tiles)
  writer.write_images(step, grids)


def progress_line_metrics(metrics: dict[str, Any], skipped_steps: int) -> dict[str, Any]:
  """The few numbers of the terminal's progress line (TensorBoard gets every metric): the loss,
  then the prior and posterior energies for EBM priors (whose update reports them),
  reconstruction and KL for the others, and the skipped steps when there are any."""
  line = {'loss': metrics['vae_loss']}
  if 'energy_prior' in metrics:  # An EBM prior's.
    line['E prior'] = metrics['energy_prior']
    line['E posterior'] = metrics['energy_posterior']
  else:
    line['recon'] = metrics['recon']
    line['kl'] = metrics['kl']
  if skipped_steps:
    line['skipped'] = skipped_steps
  return line


def describe_divergence(state: model_state.TrainState) -> str:
  reason = int(state.last_bad_reason)
  parts = [name for bit, name in ((BAD_VAE, 'the VAE loss or its gradients were non-finite'),
                                  (BAD_PRIOR, "the prior's loss or its gradients were non-finite"),
                                  (BAD_BOUNDS, 'an energy exceeded config.ebm.max_abs_energy '
                                               "(a prior's bounds)"))
           if reason & bit]
  return '; '.join(parts) or 'unknown'


# Where to look when most steps fail from the start: the data, before the settings.
DATA_HINT = ('Check the data for non-finite values first (datasets.from_arrays refuses them; a '
             "source of one's own is checked on its first example only), then the settings "
             '(learning rates, Langevin step sizes).')


class DivergenceError(RuntimeError):
  """Training diverged and could not (or was told not to) recover."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, classify=None,
                       features=None) -> model_state.TrainState:
  """Trains (resuming from `workdir` if it holds a compatible run), evaluates, checkpoints.

  Once the run reaches config.num_train_steps, and config.eval.at_end_of_training is set, it
  runs --mode=eval's evaluation of the final state (evaluation.evaluate_state: coherence, FID,
  figures into <workdir>/eval), unless <workdir>/eval/metrics.json is already of that step.

  Args:
    config: the run's config (configs/*.py).
    workdir: checkpoints, TensorBoard logs and the evaluation.
    classify, features: passed to evaluation.evaluate_state (None: the coherence classifiers
      and the standard FID network).
  """
  model, mesh, steps, data_iter = _prepare(config, workdir)
  ckpt = checkpointing.Checkpointer(workdir, keep_latest=config.keep_checkpoints,
                                    keep_best=config.keep_best_checkpoints)
  abstract = model_state.abstract_state(config, model, mesh)
  state, restores = _restore_or_init(config, workdir, ckpt, steps, abstract, data_iter)
  guard = DivergenceGuard(config, restores)

  def save(state, metrics=None, force=False):
    ckpt.save(int(state.step), state, {'data': data_iter.get_state(), 'restores': guard.restores},
              metrics=metrics, force=force)

  writer = metric_logging.MetricWriter(os.path.join(workdir, 'tensorboard'),
                                       enabled=jax.process_index() == 0)
  start_step = int(state.step)
  progress = metric_logging.ProgressLogger(config.num_train_steps, start_step,
                                           batch_size=config.batch_size,
                                           every_steps=config.log_every_steps)
  eval_key = jax.random.PRNGKey(config.seed + 1)
  # On any exit, an error included (divergence, a failing data source), the asynchronous save
  # in flight completes, so the last good checkpoint is on disk, the logs are flushed and the
  # input threads and worker processes stop.
  with ckpt, writer, contextlib.closing(data_iter), checkpointing.GracefulShutdown() as shutdown:
    step, compiled = start_step, False
    if step < config.num_train_steps:
      logging.info('Compiling the training step (the first step runs it; timed below) ...')
    while step < config.num_train_steps:
      batch = next(data_iter)
      state, metrics = run_train_step(steps, state, batch)
      step += 1
      if not compiled:  # The first step compiles: time it apart from training.
        compiled = True
        jax.block_until_ready(state)
        logging.info('Compiled the training step and ran it once in %s; training %d steps.',
                     metric_logging.format_duration(progress.mark_compiled(step)),
                     config.num_train_steps - start_step)
      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        if int(state.bad_steps) >= config.max_consecutive_bad_steps:
          progress.update(step, progress_line_metrics(jax.device_get(metrics),
                                                      int(state.skipped_steps)))
          state, step = guard.restore(state, ckpt, abstract, data_iter)
          continue
        _log_train(writer, progress, step, metrics, state)
      eval_metrics = None
      if step % config.eval_every_steps == 0 or step == config.num_train_steps:
        eval_metrics = _test(config, writer, model, state, steps,
                             jax.random.fold_in(eval_key, step), step)
      due = (eval_metrics or step % config.checkpoint_every_steps == 0 or
             step == config.num_train_steps)
      # Only states after a good step are checkpointed: they are what a divergence restores.
      # (Read only when due: reading device values every step would stall async dispatch.)
      if due and int(state.bad_steps) == 0:
        save(state, eval_metrics)
      if _any_process(shutdown.requested):
        logging.warning('Interrupted at step %d: saving a checkpoint and stopping.', step)
        save(state, force=True)
        break
  # After the `with`: the final checkpoint is on disk and the input pipeline has stopped.
  skipped, ran = int(state.skipped_steps), int(state.step)
  if skipped and 2 * skipped >= ran:
    logging.warning('%d of the %d steps were skipped (%s). %s', skipped, ran,
                    describe_divergence(state), DATA_HINT)
  if config.eval.at_end_of_training and int(state.step) >= config.num_train_steps:
    _evaluate_at_end(config, workdir, model, state, classify, features)
  return state


def _prepare(config, workdir: str):
  """Checks, the run config, the model, the compiled steps and the data: (model, mesh, steps,
  data iterator). Every check runs before the dataset is read or anything compiles."""
  log_setup.ensure_visible()  # A script's first call shows progress as main.py does.
  start = time.time()
  logging.info('Checking the config and the dataset %r ...', config.data.name)
  config_lib.validate(config)
  maybe_initialize_distributed(config)
  parallel.check_batch_divides(
      {k: config[k] for k in ('batch_size', 'eval_batch_size')}, jax.device_count())
  input_pipeline.per_process_batch_size(config.batch_size, jax.process_count())
  if jax.process_index() == 0:
    checkpointing.check_or_write_run_config(
        workdir, config, model_state.COMPATIBLE_KEYS, model_state.ADDED_KEY_DEFAULTS)
    input_pipeline.record_masks(config, workdir)  # Incomplete data: its masks, saved or checked.
  model = model_state.make_model(config)
  mesh = parallel.make_mesh()
  steps = compile_steps(config, model, mesh)
  data_iter = input_pipeline.train_iterator(config, jax.process_index(), jax.process_count())
  logging.info('Dataset %s ready (%s), in %s.', config.data.name, ', '.join(
      f'{s.name} {s.kind} {tuple(s.shape)}' for s in model.vae.modalities),
               metric_logging.format_duration(time.time() - start))
  return model, mesh, steps, data_iter


def _restore_or_init(config, workdir: str, ckpt, steps, abstract, data_iter):
  """(state, restores so far): the latest checkpoint with the data position it saved, or a
  new run's initial state."""
  if ckpt.latest_step() is not None:
    state, extra = ckpt.restore(abstract)
    input_pipeline.restore_position(data_iter, extra['data'], config)
    logging.info('Resumed from step %d in %s.', int(state.step), workdir)
    return state, extra.get('restores', 0)
  start = time.time()
  logging.info('Initialising the parameters (compiles the init function) ...')
  state = steps['init'](parallel.replicate(jax.random.PRNGKey(config.seed), steps['replicated']))
  jax.block_until_ready(state)
  logging.info('Initialised a new run in %s, in %s.', workdir,
               metric_logging.format_duration(time.time() - start))
  return state, 0


def _log_train(writer, progress, step: int, metrics, state) -> None:
  """The progress line and the training scalars of `step`."""
  metrics = jax.device_get(metrics)
  skipped = int(state.skipped_steps)
  report = progress.update(step, progress_line_metrics(metrics, skipped))
  scalars = {f'train/{k}': v for k, v in metrics.items()}
  scalars['train/skipped_steps'] = skipped
  if report:
    scalars.update({f'perf/{k}': v for k, v in report.items()})
  writer.write_scalars(step, scalars)


def _test(config, writer, model, state, steps, key, step: int) -> dict[str, float]:
  """The test loss of `step`, logged, and its sample grids."""
  eval_metrics = evaluate(config, state, steps, key)
  logging.info('step %d | test loss %s | test recon %s', step,
               metric_logging.format_value(eval_metrics['test_loss']),
               metric_logging.format_value(eval_metrics['test_recon']))
  writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_metrics.items()})
  write_samples(writer, config, model, state, steps, jax.random.fold_in(key, 1), step)
  writer.flush()
  return eval_metrics


class DivergenceGuard:
  """What a run does after config.max_consecutive_bad_steps bad steps in a row: restore the
  newest good checkpoint with a fresh random stream (or stop, _handle_divergence). Counts the
  restores (kept in the checkpoints) and how often one checkpoint was restored in a row."""

  def __init__(self, config, restores: int = 0):
    self.config = config
    self.restores = restores
    self.in_a_row = (None, 0)  # (the step restored, how often in a row).

  def restore(self, state, ckpt, abstract, data_iter):
    """(the restored state, its step); raises DivergenceError when the run must stop."""
    state, step = _handle_divergence(self.config, state, ckpt, abstract, data_iter,
                                     self.in_a_row)
    self.in_a_row = (step, self.in_a_row[1] + 1 if self.in_a_row[0] == step else 1)
    self.restores += 1
    return state.replace(key=jax.random.fold_in(state.key, 10_000 + self.restores)), step


def _evaluate_at_end(config, workdir, model, state, classify, features) -> None:
  """--mode=eval's evaluation of the final state, unless <workdir>/eval holds it already."""
  step = int(state.step)
  done = workdir_lib.evaluated_step(workdir) == step
  # Evaluation runs compiled functions over every device: all processes do it, or none.
  if not _any_process(not done):
    logging.info('Training finished at step %d; its evaluation is already in %s (metrics.json, '
                 'report.md). To redo it: --mode=eval with the same --config and --workdir.',
                 step, os.path.join(workdir, 'eval'))
    return
  logging.info('Training finished at step %d: evaluating it as --mode=eval does (switch off '
               'with --config.eval.at_end_of_training=False).', step)
  try:
    evaluation.evaluate_state(config, workdir, state, model=model, classify=classify,
                              features=features)
  except Exception:
    logging.error('The evaluation of step %d failed; the checkpoint is saved. Relaunching the '
                  'run (or --mode=eval) evaluates it again.', step)
    raise


def _any_process(flag: bool) -> bool:
  """True if `flag` is set on any process (all processes must then act on the same step)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def _handle_divergence(config, state, ckpt, abstract, data_iter, restores_in_a_row):
  """Restores the newest good checkpoint, or raises DivergenceError: on_divergence='stop', no
  checkpoint, or that checkpoint restored config.max_restores times in a row already (every
  restore diverged again before a newer good step was saved)."""
  what = describe_divergence(state)
  message = (f'Training diverged at step {int(state.step)}: {int(state.bad_steps)} bad steps in '
             f'a row ({what}); {int(state.skipped_steps)} skipped in total.')
  ckpt.wait_until_finished()  # The newest good step may still be being written.
  good = ckpt.latest_step()
  if config.on_divergence == 'stop' or good is None:
    raise DivergenceError(message + (' Stopping (config.on_divergence=stop).'
                                     if good is not None else
                                     ' No checkpoint to restore: no step was good. ' + DATA_HINT))
  restored_step, count = restores_in_a_row
  if restored_step == good and count >= config.max_restores:
    raise DivergenceError(
        f'{message} Stopping: step {good} was restored {count} times in a row '
        f'(config.max_restores={config.max_restores}) and diverged again each time. The run is '
        'unstable, not unlucky: lower the learning rates or the Langevin step sizes, or set an '
        'energy penalty (config.ebm.energy_l2); for non-finite VAE gradients also a larger '
        'model.scale_eps (a posterior scale that collapses onto 1e-20 overflows float32 in the '
        'gradient). The checkpoints are kept.')
  logging.error('%s Restoring step %d with a fresh random stream.', message, good)
  restored, extra = ckpt.restore(abstract, step=good)
  input_pipeline.restore_position(data_iter, extra['data'], config)
  return restored, int(restored.step)
