"""Training end to end at smoke scale: every model trains, resumes, survives interruption and
planted NaNs; the sharded step equals the single-device step."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax import checkpointing
from moe_ebm_jax import config_lib
from moe_ebm_jax import metric_logging
from moe_ebm_jax import model_state
from moe_ebm_jax import optimizers
from moe_ebm_jax import parallel
from moe_ebm_jax import train
from moe_ebm_jax.vae import objectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(polymnist_dir, model='moe_ebm', **overrides):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('smoke', os.path.join(ROOT, 'configs', 'smoke.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(model)
  config.data.data_dir = polymnist_dir
  config.num_train_steps = 6
  config.log_every_steps = 2
  config.eval_every_steps = 6
  config.checkpoint_every_steps = 3
  for key, value in overrides.items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  return config


def leaves_equal(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.mark.slow
@pytest.mark.parametrize('model', ['moe_ebm'])  # Every model trains: test_datasets.py.
def test_smoke_model_trains_checkpoints_logs_and_resumes(polymnist_dir, tmp_path, model):
  workdir = str(tmp_path / model)
  config = smoke_config(polymnist_dir, model, **{'eval.at_end_of_training': False})
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 6 and int(state.skipped_steps) == 0
  assert not os.path.exists(os.path.join(workdir, 'eval'))  # Switched off: no evaluation.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  scalars = metric_logging.read_scalars(os.path.join(workdir, 'tensorboard'))
  assert [s for s, _ in scalars['train/vae_loss']] == [2, 4, 6]
  assert np.isfinite(scalars['eval/test_loss'][0][1])
  if model != 'mmvaeplus':
    assert {'train/ebm_loss', 'train/energy_prior', 'train/energy_posterior',
            'train/prior_grad_norm'} <= set(scalars)
  if model == 'moe_ebm':
    assert 'train/posterior_grad_norm' in scalars
  images = metric_logging.read_image_tags(os.path.join(workdir, 'tensorboard'))
  assert {'samples/joint', 'samples/cross_from_m0'} <= images
  # Running again with more steps resumes at step 6 instead of restarting.
  config.num_train_steps = 8
  resumed = train.train_and_evaluate(config, workdir)
  assert int(resumed.step) == 8
  assert 8 in checkpointing.Checkpointer(workdir, keep_latest=3, keep_best=1).all_steps()


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(polymnist_dir, tmp_path):
  # With persistent prior chains: the prior's state is resumed too (a batch of 8 wraps 16).
  persistent = {'checkpoint_every_steps': 100, 'ebm.persistent_chains': 16}
  config = smoke_config(polymnist_dir, 'moe_ebm', **persistent)
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  first = smoke_config(polymnist_dir, 'moe_ebm', num_train_steps=4, **persistent)
  train.train_and_evaluate(first, str(tmp_path / 'split'))
  resumed = train.train_and_evaluate(config, str(tmp_path / 'split'))
  assert int(resumed.step) == int(straight.step) == 6
  assert int(resumed.prior_state['cursor']) == 6 * 8 % 16
  leaves_equal(resumed.vae_params, straight.vae_params, rtol=0, atol=0)
  leaves_equal(resumed.prior_params, straight.prior_params, rtol=0, atol=0)
  leaves_equal(resumed.prior_opt_state, straight.prior_opt_state, rtol=0, atol=0)
  leaves_equal(resumed.prior_state, straight.prior_state, rtol=0, atol=0)


@pytest.mark.slow
def test_workdir_with_an_incompatible_run_is_refused_untouched(polymnist_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(smoke_config(polymnist_dir, 'mmvaeplus', num_train_steps=3), workdir)
  before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in ('config.json', 'checkpoints')}
  with pytest.raises(checkpointing.IncompatibleRunError, match='model.name'):
    train.train_and_evaluate(smoke_config(polymnist_dir, 'moe_ebm'), workdir)
  assert before == {p: os.path.getmtime(os.path.join(workdir, p)) for p in before}


def test_config_errors_fail_before_compiling(polymnist_dir, tmp_path):
  with pytest.raises(ValueError, match='does not divide over'):
    parallel.check_batch_divides({'batch_size': 6, 'eval_batch_size': 8}, 4)
  with pytest.raises(ValueError, match='invalid config: model.estimator'):
    train.train_and_evaluate(smoke_config(polymnist_dir, **{'model.estimator': 'vi'}),
                             str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def one_step_setup(config, model_name='moe_ebm'):
  model = model_state.make_model(config)
  vae_tx, ebm_tx = optimizers.make_optimizers(config)
  state = jax.jit(functools.partial(model_state.init_state, model, vae_tx, ebm_tx))(
      jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(train.train_step, model=model, vae_tx=vae_tx, prior_tx=ebm_tx))
  return state, step


@pytest.mark.slow
def test_planted_nan_is_skipped_and_counted(polymnist_dir):
  config = smoke_config(polymnist_dir, 'moe_ebm', **{'ebm.persistent_chains': 16})
  state, step = one_step_setup(config)
  images = np.random.default_rng(0).random((8, 5, 28, 28, 3), np.float32)
  images[3, 2, 5, 5, 0] = np.nan
  new, metrics = step(state, jnp.asarray(images))
  assert float(metrics['step_ok']) == 0.0
  assert int(new.step) == 1 and int(new.bad_steps) == 1 and int(new.skipped_steps) == 1
  assert int(new.last_bad_reason) & train.BAD_VAE
  leaves_equal(new.vae_params, state.vae_params, rtol=0, atol=0)
  leaves_equal(new.prior_params, state.prior_params, rtol=0, atol=0)
  leaves_equal(new.vae_opt_state, state.vae_opt_state, rtol=0, atol=0)
  leaves_equal(new.prior_state, state.prior_state, rtol=0, atol=0)  # Chains and cursor kept.
  # A good batch afterwards updates and resets the consecutive count.
  images[3, 2, 5, 5, 0] = 0.5
  newer, metrics = step(new, jnp.asarray(images))
  assert float(metrics['step_ok']) == 1.0 and int(newer.bad_steps) == 0
  assert int(newer.skipped_steps) == 1


@pytest.mark.slow
def test_exploding_energy_is_skipped(polymnist_dir):
  config = smoke_config(polymnist_dir, 'ebm_mmvaeplus', **{'ebm.max_abs_energy': 100.0})
  state, step = one_step_setup(config)
  params = jax.tree.map(lambda x: x, state.prior_params)
  params['params']['dense_out']['bias'] = jnp.full_like(params['params']['dense_out']['bias'],
                                                        1e3)
  state = state.replace(prior_params=params)
  images = jnp.asarray(np.random.default_rng(0).random((8, 5, 28, 28, 3), np.float32))
  new, metrics = step(state, images)
  assert float(metrics['step_ok']) == 0.0 and int(new.last_bad_reason) == train.BAD_BOUNDS
  leaves_equal(new.prior_params, state.prior_params, rtol=0, atol=0)


class PoisonedIterator:
  """Wraps the training iterator and puts NaNs into the batches of chosen steps."""

  def __init__(self, inner, bad_steps):
    self.inner, self.bad_steps, self.count = inner, set(bad_steps), 0

  def __next__(self):
    batch = next(self.inner)
    self.count += 1
    if self.count in self.bad_steps:
      batch = dict(batch, x={k: np.full_like(v, np.nan) for k, v in batch['x'].items()})
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)

  def close(self):
    self.inner.close()


@pytest.mark.slow
@pytest.mark.parametrize('policy', ['stop', 'restore'])
def test_divergence_stops_or_restores_the_last_good_checkpoint(polymnist_dir, tmp_path,
                                                               monkeypatch, policy):
  real = train.input_pipeline.train_iterator
  monkeypatch.setattr(train.input_pipeline, 'train_iterator',
                      lambda *a, **k: PoisonedIterator(real(*a, **k), range(4, 8)))
  config = smoke_config(polymnist_dir, 'mmvaeplus', num_train_steps=10, log_every_steps=1,
                        checkpoint_every_steps=2, max_consecutive_bad_steps=3,
                        on_divergence=policy)
  workdir = str(tmp_path / policy)
  if policy == 'stop':
    with pytest.raises(train.DivergenceError, match='3 bad steps in a row.*VAE loss'):
      train.train_and_evaluate(config, workdir)
    # Only good states were checkpointed.
    assert checkpointing.Checkpointer(workdir, keep_latest=3, keep_best=1).latest_step() == 2
  else:
    state = train.train_and_evaluate(config, workdir)
    # Steps 4-6 were bad; the run went back to step 2 and trained on to the end.
    assert int(state.step) == 10 and int(state.bad_steps) == 0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.vae_params))


@pytest.mark.slow
def test_divergence_after_every_restore_stops_after_max_restores(polymnist_dir, tmp_path,
                                                                 monkeypatch):
  """Every batch from the fourth on is poisoned: each restore of step 2 diverges again. The run
  restores it max_restores times, then stops with an error instead of looping forever."""
  real = train.input_pipeline.train_iterator
  restores = []
  monkeypatch.setattr(train.input_pipeline, 'train_iterator',
                      lambda *a, **k: PoisonedIterator(real(*a, **k), range(4, 10**6)))
  monkeypatch.setattr(train.input_pipeline, 'restore_position',
                      lambda it, position, config: restores.append(1) or it.set_state(position))
  config = smoke_config(polymnist_dir, 'mmvaeplus', num_train_steps=50, log_every_steps=1,
                        checkpoint_every_steps=2, max_consecutive_bad_steps=2, max_restores=2)
  with pytest.raises(train.DivergenceError, match='step 2 was restored 2 times in a row'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert len(restores) == 2


SHARDED_SCRIPT = textwrap.dedent('''
    import os, sys, functools
    os.environ['JAX_PLATFORMS'] = 'cpu'  # A CPU split in four, also beside an accelerator.
    # Kept: the tests' own XLA flags (conftest.py: a faster-compiling backend).
    os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_train import smoke_config
    from moe_ebm_jax import model_state, parallel, train
    assert jax.device_count() == 4
    # Persistent prior chains: their state is sharded like the rest and must agree too.
    config = smoke_config({data!r}, {model!r}, **{{'ebm.persistent_chains': 16}})
    model = model_state.make_model(config)
    images = jnp.asarray(np.random.default_rng(0).random((8, 5, 28, 28, 3), np.float32))
    keep = np.random.default_rng(1).random((5, 8)) < 0.5
    keep[0] = True
    observed = {{f'm{{m}}': jnp.asarray(keep[m]) for m in range(5)}}
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      steps = train.compile_steps(config, model, parallel.make_mesh(devices))
      state = steps['init'](jax.random.PRNGKey(0))
      for _ in range(2):
        state, metrics = steps['train'](state, jax.device_put(images, steps['batch']))
      assert len(state.vae_params['decoders']['params']['conv_out']['kernel'].sharding.device_set) == len(devices)
      # Incomplete data's step: the masks split over the devices like the batch.
      masked, masked_metrics = steps['train_incomplete'](
          steps['init'](jax.random.PRNGKey(0)), jax.device_put(images, steps['batch']),
          jax.device_put(observed, steps['batch']))
      results.append(jax.device_get((state.vae_params, state.prior_params, state.prior_state,
                                     metrics, masked.vae_params, masked.prior_params,
                                     masked_metrics)))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    print('SHARDED_EQUALS_SINGLE')
''')


@pytest.mark.slow
@pytest.mark.parametrize('model', ['moe_ebm'])  # MMVAE+'s step and the EBM's chains.
def test_step_on_four_devices_equals_one_device(polymnist_dir, model):
  script = SHARDED_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, 'tests'),
                                 data=polymnist_dir, model=model)
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=600, check=False)
  assert 'SHARDED_EQUALS_SINGLE' in proc.stdout, proc.stderr[-3000:]


TWO_PROCESS_SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ['JAX_PLATFORMS'] = 'cpu'  # One CPU device per process, also beside a GPU.
    os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=1'
    import jax, numpy as np
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_train import smoke_config
    from moe_ebm_jax import train
    process_id, num_processes = int(sys.argv[1]), int(sys.argv[2])
    # The evaluation at the end runs on every process, as --mode=eval does (cheap classifier).
    # MMVAE+: MOE-EBM's chains over several devices are test_step_on_four_devices_...'s.
    config = smoke_config({data!r}, 'mmvaeplus', num_train_steps=4, eval_every_steps=4,
                          **{{'eval.at_end_of_training': True, 'eval.num_fid_samples': 0}})
    if num_processes > 1:
      config.distributed.enabled = True
      config.distributed.coordinator_address = {address!r}
      config.distributed.num_processes = num_processes
      config.distributed.process_id = process_id
    state = train.train_and_evaluate(config, sys.argv[3],
                                     classify=lambda d: np.zeros((len(d['m0']), len(d)), int))
    assert jax.process_count() == num_processes and jax.device_count() == num_processes
    if process_id == 0:
      leaves = [np.asarray(x) for x in jax.tree.leaves((state.vae_params, state.prior_params))]
      np.savez(sys.argv[4], *leaves)
    print('PROCESS_DONE', process_id)
''')


def free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_over_loopback_agree_with_one(polymnist_dir, tmp_path):
  """Two processes (one CPU device each) train as one process does, both on the CPU, and
  evaluate at the end as one does."""
  script = TWO_PROCESS_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, 'tests'),
                                     data=polymnist_dir, address=f'127.0.0.1:{free_port()}')

  def launch(num_processes):
    workdir, out = str(tmp_path / f'run{num_processes}'), str(tmp_path / f'{num_processes}.npz')
    return out, workdir, [subprocess.Popen(
        [sys.executable, '-c', script, str(i), str(num_processes), workdir, out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(num_processes)]

  runs = [launch(2), launch(1)]
  params = []
  for out, workdir, procs in runs:
    for i, proc in enumerate(procs):
      stdout, stderr = proc.communicate(timeout=600)
      assert f'PROCESS_DONE {i}' in stdout, stderr[-3000:]
    with np.load(out) as f:
      params.append([f[f'arr_{i}'] for i in range(len(f.files))])
    with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
      assert json.load(f)['step'] == 4
  two, one = params
  assert len(one) == len(two)
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits_cleanly(polymnist_dir, tmp_path, signum):
  workdir = str(tmp_path / 'run')
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), '--config=configs/smoke.py:mmvaeplus',
       f'--workdir={workdir}', f'--config.data.data_dir={polymnist_dir}',
       '--config.num_train_steps=100000', '--config.log_every_steps=1',
       '--config.eval_every_steps=100000', '--config.checkpoint_every_steps=100000'],
      cwd=ROOT, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:  # Wait until training is under way.
    lines.append(line)
    if 'step 3/100000' in line:
      proc.send_signal(signum)
      break
  _, rest = proc.communicate(timeout=300)
  log = ''.join(lines) + rest
  assert proc.returncode == 0, log[-3000:]
  assert 'saving a checkpoint and stopping' in log
  steps = checkpointing.Checkpointer(workdir, keep_latest=3, keep_best=1).all_steps()
  assert len(steps) == 1 and steps[0] >= 3


@pytest.mark.slow
def test_beta_warmup_step_equals_a_step_with_the_scaled_beta(polymnist_dir):
  """Step s of a warm-up over N steps is exactly a step with beta * (s + 1) / N, then beta."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(4, 5, 28, 28, 3)), jnp.float32)

  def step_once(step, **overrides):
    config = smoke_config(polymnist_dir, 'mmvaeplus', **overrides)
    model = model_state.make_model(config)
    vae_tx, ebm_tx = optimizers.make_optimizers(config)
    state = model_state.init_state(model, vae_tx, ebm_tx, jax.random.PRNGKey(0))
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    return train.train_step(state, images, model=model, vae_tx=vae_tx, prior_tx=ebm_tx)

  beta = smoke_config(polymnist_dir, 'mmvaeplus').model.beta
  for step, fraction in ((1, 2 / 4), (3, 1.0), (7, 1.0)):
    warm, warm_metrics = step_once(step, **{'model.beta_warmup_steps': 4})
    fixed, fixed_metrics = step_once(step, **{'model.beta': beta * fraction})
    assert float(warm_metrics['beta']) == pytest.approx(beta * fraction)
    np.testing.assert_allclose(float(warm_metrics['vae_loss']), float(fixed_metrics['vae_loss']),
                               rtol=1e-6)
    for a, b in zip(jax.tree.leaves(warm.vae_params), jax.tree.leaves(fixed.vae_params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # A warm-up step is not a full-beta step: the KL weight matters to the loss.
  _, full_metrics = step_once(1)
  assert abs(float(full_metrics['vae_loss']) - float(step_once(
      1, **{'model.beta_warmup_steps': 4})[1]['vae_loss'])) > 1e-3


class BreakingIterator(PoisonedIterator):
  """Wraps the training iterator and raises on the `at`-th batch (a data source that fails)."""

  def __init__(self, inner, at):
    super().__init__(inner, bad_steps=())
    self.at = at

  def __next__(self):
    if self.count + 1 == self.at:
      raise OSError('the data source went away')
    return super().__next__()


@pytest.mark.slow
def test_an_error_mid_run_keeps_the_checkpoint_being_written(polymnist_dir, tmp_path,
                                                             monkeypatch):
  """The asynchronous save of step 2 completes although step 3 fails straight after it."""
  real = train.input_pipeline.train_iterator
  monkeypatch.setattr(train.input_pipeline, 'train_iterator',
                      lambda *a, **k: BreakingIterator(real(*a, **k), at=3))
  config = smoke_config(polymnist_dir, 'mmvaeplus', num_train_steps=10,
                        checkpoint_every_steps=2)
  workdir = str(tmp_path / 'run')
  with pytest.raises(OSError, match='went away'):
    train.train_and_evaluate(config, workdir)
  assert checkpointing.Checkpointer(workdir, keep_latest=3, keep_best=1).latest_step() == 2
  # And the run resumes from it.
  monkeypatch.setattr(train.input_pipeline, 'train_iterator', real)
  config.num_train_steps = 4
  assert int(train.train_and_evaluate(config, workdir).step) == 4


@pytest.mark.slow
def test_energy_weight_one_adds_f_a_to_the_bound_unweighted(polymnist_dir):
  """ebm.energy_weight: 'beta' puts beta * f_a(z) in every log-weight, 'one' f_a(z) (Eq. 5). With
  the same samples the ELBO losses (minus the mean log-weight) differ by (beta - 1) mean f_a."""
  from moe_ebm_jax.vae import objectives  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(4, 5, 28, 28, 3)), jnp.float32)
  beta = 2.5
  losses = {}
  for weight in config_lib.ENERGY_WEIGHTS:
    config = smoke_config(polymnist_dir, 'moe_ebm', **{'ebm.energy_weight': weight,
                                                       'model.beta': beta})
    model = model_state.make_model(config)
    vae_params = model.vae.init(jax.random.PRNGKey(0))
    ebm_params = model.prior.energy.init(jax.random.PRNGKey(1), jnp.zeros((1, model.vae.latent_z)))
    loss, aux = objectives.mmvaeplus_objective(
        model.vae, vae_params, images, jax.random.PRNGKey(2), beta=beta, num_samples=1,
        estimator='elbo', log_prior_z=model.log_prior_z(ebm_params, beta))
    losses[weight] = float(loss)
    f_a = model.prior.energy.apply(ebm_params, aux.latents.z)  # (M, K, B): the same samples for both.
  assert abs(float(f_a.mean())) > 1e-3  # Else the check below could not fail.
  # float32 losses of ~7,600 (ulp ~5e-4): a tolerance far below the 0.4 being checked.
  assert losses['one'] - losses['beta'] == pytest.approx((beta - 1) * float(f_a.mean()),
                                                         abs=5e-3)
  # And a training step runs with it.
  config = smoke_config(polymnist_dir, 'moe_ebm', **{'ebm.energy_weight': 'one'})
  state, step = one_step_setup(config)
  state, metrics = step(state, images)
  assert float(metrics['step_ok']) == 1.0
  with pytest.raises(ValueError, match='ebm.energy_weight'):
    config_lib.validate(smoke_config(polymnist_dir, 'moe_ebm', **{'ebm.energy_weight': 'half'}))


def test_progress_line_shows_the_loss_and_the_models_key_numbers():
  fixed = {'vae_loss': 7.0, 'recon': -6.0, 'kl': 1.0, 'bound': -7.0}
  ebm = {**fixed, 'energy_prior': -0.1, 'energy_posterior': -0.3, 'ebm_loss': 0.2}
  assert train.progress_line_metrics(ebm, 0) == {'loss': 7.0, 'E prior': -0.1, 'E posterior': -0.3}
  assert train.progress_line_metrics(fixed, 0) == {'loss': 7.0, 'recon': -6.0, 'kl': 1.0}
  assert train.progress_line_metrics(fixed, 3)['skipped'] == 3


@pytest.mark.slow
@pytest.mark.parametrize('model_name', config_lib.MODELS)
def test_eval_step_loss_is_the_models_own_objective(polymnist_dir, model_name):
  """The test loss is the model's training objective at the full beta, on the same batch and
  key (it once was MMVAE+'s objective for every model)."""
  config = smoke_config(polymnist_dir, model_name, **{'model.beta_warmup_steps': 4})
  model = model_state.make_model(config)
  vae_tx, ebm_tx = optimizers.make_optimizers(config)
  state = model_state.init_state(model, vae_tx, ebm_tx, jax.random.PRNGKey(3))
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 5, 28, 28, 3)), jnp.float32)
  key = jax.random.PRNGKey(7)
  out = jax.jit(functools.partial(train.eval_step, model=model))(state, images, key)
  objective = jax.jit(lambda params, ebm_params: objectives.get(config.model.objective)
                      .fn(model.vae, params, images, key, beta=config.model.beta,
                          num_samples=model.num_samples, estimator=model.estimator,
                          log_prior_z=model.log_prior_z(ebm_params, config.model.beta))[0])
  expected = float(objective(state.vae_params, state.prior_params))
  assert float(out['count']) == 4
  assert float(out['loss_sum']) / 4 == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_moe_ebm_trains_with_mala_chains(polymnist_dir):
  """config.ebm.sampler swaps both chains' sampler: MALA's acceptance rates reach the metrics,
  and a step with the MALA chains differs from one with Langevin chains."""
  images = jnp.asarray(np.random.default_rng(0).random((8, 5, 28, 28, 3), np.float32))
  out = {}
  for sampler in ('mala', 'langevin'):
    config = smoke_config(polymnist_dir, 'moe_ebm', **{'ebm.sampler': sampler})
    config_lib.validate(config)
    state, step = one_step_setup(config)
    _, out[sampler] = step(state, images)
  mala = out['mala']
  assert float(mala['step_ok']) == 1.0
  for name in ('prior_accept_rate', 'posterior_accept_rate'):
    assert 0.0 < float(mala[name]) <= 1.0
  assert 'prior_accept_rate' not in out['langevin']
  assert float(mala['ebm_loss']) != float(out['langevin']['ebm_loss'])
  with pytest.raises(ValueError, match='MALA needs noise_scale > 0'):
    config_lib.validate(smoke_config(polymnist_dir, 'moe_ebm',
                                     **{'ebm.sampler': 'mala', 'ebm.noise_scale': 0.0}))
