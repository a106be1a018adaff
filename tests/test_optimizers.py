"""optimizers.torch_adam is torch.optim.Adam, AMSGrad included, update for update.

Independent truths: a numpy transcription of the algorithm as PyTorch documents it (float64),
and, where torch is installed (the `fid` extra), torch itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax import optimizers

NUM_STEPS = 1500
SHAPE = (40, 25)  # 1,000 coordinates.


def varied_gradients(num_steps=NUM_STEPS, shape=SHAPE, seed=0) -> np.ndarray:
  """(num_steps, *shape) float64: noise whose scale shrinks 100-fold over the run (as a VAE's
  early gradients do), a bump back up in the middle, per-coordinate scales over three orders of
  magnitude, sign flips and exact zeros."""
  rng = np.random.default_rng(seed)
  n = int(np.prod(shape))
  t = np.arange(num_steps)[:, None]
  scale = 100.0 ** (-t / num_steps) * np.where((t > 600) & (t < 700), 20.0, 1.0)
  per_coordinate = 10.0 ** rng.uniform(-2, 1, n)
  g = rng.standard_normal((num_steps, n)) * scale * per_coordinate + 0.3 * scale
  g[:, :2] = 0.0  # Coordinates that never get a gradient.
  g[::7, 2] = 0.0
  return g.reshape((num_steps,) + tuple(shape))


def numpy_adam(grads, lr, b1, b2, eps, amsgrad):
  """torch.optim.Adam as its documentation writes it (no weight decay): the updates, per step."""
  m = np.zeros(grads.shape[1:])
  v = np.zeros(grads.shape[1:])
  v_max = np.zeros(grads.shape[1:])
  updates = []
  for step, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat = m / (1 - b1**step)
    if amsgrad:
      v_max = np.maximum(v_max, v)
      v_hat = v_max / (1 - b2**step)
    else:
      v_hat = v / (1 - b2**step)
    updates.append(-lr * m_hat / (np.sqrt(v_hat) + eps))
  return np.stack(updates)


def jax_updates(tx, grads, dtype):
  """The updates of `tx` for a gradient sequence (params do not enter Adam's updates)."""
  params = jnp.zeros(grads.shape[1:], dtype)

  def step(state, g):
    updates, state = tx.update(g, state, params)
    return state, updates

  _, updates = jax.lax.scan(step, tx.init(params), jnp.asarray(grads, dtype))
  return np.asarray(updates, np.float64)


def relative_error(a, b):
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize('amsgrad', [True, False])
def test_torch_adam_matches_the_documented_algorithm_in_float64(amsgrad):
  grads = varied_gradients()
  kwargs = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8)
  expected = numpy_adam(grads, amsgrad=amsgrad, **kwargs)
  with jax.enable_x64(True):
    ours = jax_updates(optimizers.torch_adam(kwargs['lr'], kwargs['b1'], kwargs['b2'],
                                             kwargs['eps'], amsgrad), grads, jnp.float64)
  # Per step and coordinate, relative to that step's largest update.
  per_step = np.abs(ours - expected).max(axis=(1, 2)) / np.abs(expected).max(axis=(1, 2))
  assert per_step.max() <= 1e-6, per_step.max()


@pytest.mark.parametrize('amsgrad', [True, False])
def test_torch_adam_in_float32_and_other_betas(amsgrad):
  grads = varied_gradients(seed=1)
  kwargs = dict(lr=2e-5, b1=0.5, b2=0.99, eps=1e-6)  # The EBM's betas.
  expected = numpy_adam(grads, amsgrad=amsgrad, **kwargs)
  ours = jax_updates(optimizers.torch_adam(kwargs['lr'], kwargs['b1'], kwargs['b2'],
                                           kwargs['eps'], amsgrad), grads, jnp.float32)
  assert relative_error(ours, expected) <= 1e-5


def test_optax_amsgrad_is_not_torch_amsgrad():
  """Why the torch algorithm is needed: with gradients that shrink 100-fold over 2,000 steps
  optax's AMSGrad ends up taking far smaller steps (its maximum is over bias-corrected second
  moments, pinned at the large values of the first steps)."""
  rng = np.random.default_rng(2)
  t = np.arange(2000)[:, None]
  grads = rng.standard_normal((2000, 1000)) * 100.0 ** (-t / 2000)
  torch_like = numpy_adam(grads, 1e-3, 0.9, 0.999, 1e-8, amsgrad=True)
  optax_updates = jax_updates(optax.amsgrad(1e-3), grads, jnp.float32)
  ratio = np.abs(optax_updates).mean(axis=1) / np.abs(torch_like).mean(axis=1)
  assert ratio[0] == pytest.approx(1.0, rel=1e-3)  # Step 1: both are lr * sign(g).
  assert ratio[-1] < 0.5, ratio[-1]


def test_learning_rate_schedule_is_read_at_the_step_count():
  grads = varied_gradients(num_steps=50, shape=(3,))
  schedule = lambda count: 1e-3 * (count + 1)
  ours = jax_updates(optimizers.torch_adam(schedule, amsgrad=True), grads, jnp.float32)
  unit = numpy_adam(grads, 1.0, 0.9, 0.999, 1e-8, amsgrad=True)
  np.testing.assert_allclose(ours, unit * 1e-3 * np.arange(1, 51)[:, None], rtol=1e-5)


def _config(implementation='torch', batch_size=64):
  config = config_lib.base_config('moe_ebm')
  config.batch_size = batch_size
  config.optim.implementation = implementation
  return config


def test_vae_optimizer_with_mean_gradients_equals_torch_on_summed_gradients():
  """Our loss is the batch mean, the reference's the batch sum: with eps / batch_size the
  updates on our gradients are the reference's updates on its B-times-larger gradients."""
  b = 64
  grads = varied_gradients(num_steps=300, seed=3) * 1e-6  # Small: eps matters here.
  vae_tx, _ = optimizers.make_optimizers(_config(batch_size=b))
  with jax.enable_x64(True):
    ours = jax_updates(vae_tx, grads, jnp.float64)
  reference = numpy_adam(grads * b, 1e-3, 0.9, 0.999, 1e-8, amsgrad=True)
  assert relative_error(ours, reference) <= 1e-9
  naive = numpy_adam(grads, 1e-3, 0.9, 0.999, 1e-8, amsgrad=True)  # eps not rescaled.
  assert relative_error(naive, reference) > 1e-3  # So the rescaling is what makes them equal.


def test_make_optimizers_follows_the_config():
  vae_tx, ebm_tx = optimizers.make_optimizers(_config('optax'))
  grads = varied_gradients(num_steps=200, shape=(10,), seed=4)
  np.testing.assert_allclose(jax_updates(vae_tx, grads, jnp.float32),
                             jax_updates(optax.amsgrad(1e-3), grads, jnp.float32), rtol=1e-6)
  _, ebm_tx = optimizers.make_optimizers(_config('torch'))
  expected = numpy_adam(grads, 2e-5, 0.5, 0.999, 1e-8, amsgrad=False)
  assert relative_error(jax_updates(ebm_tx, grads, jnp.float32), expected) <= 1e-5
  bad = _config('pytorch')
  with pytest.raises(ValueError, match='optim.implementation'):
    config_lib.validate(bad)
  with pytest.raises(ValueError, match='choose one of'):
    optimizers.adam('pytorch', 1e-3)


@pytest.mark.parametrize('amsgrad', [True, False])
def test_torch_adam_matches_torch_itself(amsgrad):
  torch = pytest.importorskip('torch')
  grads = varied_gradients(seed=5)
  for dtype, np_dtype, tol in ((torch.float64, jnp.float64, 1e-9),
                               (torch.float32, jnp.float32, 1e-5)):
    param = torch.zeros(SHAPE, dtype=dtype, requires_grad=True)
    opt = torch.optim.Adam([param], lr=1e-3, amsgrad=amsgrad)
    torch_updates = []
    for g in grads:
      with torch.no_grad():
        param.zero_()  # Adam's update does not read the params: read it back exactly.
      param.grad = torch.as_tensor(g, dtype=dtype)
      opt.step()
      torch_updates.append(param.detach().double().numpy().copy())
    torch_updates = np.stack(torch_updates)
    with jax.enable_x64(np_dtype == jnp.float64):
      ours = jax_updates(optimizers.torch_adam(1e-3, amsgrad=amsgrad), grads, np_dtype)
    # Per step, relative to its largest update.
    per_step = (np.abs(ours - torch_updates).max(axis=(1, 2)) /
                np.abs(torch_updates).max(axis=(1, 2)))
    assert per_step.max() <= tol, (dtype, per_step.max())


def test_torch_adam_state_is_a_pytree_of_arrays():
  """The state is a pytree of arrays (checkpointable), None without amsgrad."""
  params = {'a': jnp.ones((2, 3)), 'b': jnp.zeros(4)}
  with_max = optimizers.torch_adam(1e-3, amsgrad=True).init(params)
  without = optimizers.torch_adam(1e-3, amsgrad=False).init(params)
  assert jax.tree.structure(with_max.max_exp_avg_sq) == jax.tree.structure(params)
  assert without.max_exp_avg_sq is None
  assert len(jax.tree.leaves(without)) == 1 + 2 * len(jax.tree.leaves(params))
