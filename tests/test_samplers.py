"""Tests for moe_ebm_jax.mala and the sampler registry (samplers.py).

MALA's stationary law is its target exactly, at any step size; unadjusted Langevin's is off by
O(s^2) (for a Gaussian of variance v: v / (1 - s^2 / (4 v))). At step sizes where that bias is
tens of percent, MALA's moments must match the target's within sampling error (5 standard errors
over independent chains) and be far from the unadjusted chain's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax.latent import langevin
from moe_ebm_jax.latent import mala
from moe_ebm_jax.latent import samplers
from moe_ebm_jax.vae import distributions

_STATIC = ('num_steps', 'keep_trajectory')


def _jit(sampler, log_prob):
  return jax.jit(functools.partial(sampler, log_prob), static_argnames=_STATIC)


def test_gaussian_target_is_exact_at_a_step_size_where_langevin_is_biased():
  n, s = 20_000, 1.0
  loc, std = jnp.array([1.0, -2.0]), jnp.array([1.0, 2.0])
  log_prob = lambda z: distributions.normal_log_prob(z, loc, std)
  init = jax.random.normal(jax.random.key(0), (n, 2))
  z, diag = _jit(mala.sample, log_prob)(init, jax.random.key(1), num_steps=600, step_size=s)
  z_ula, _ = _jit(langevin.sample, log_prob)(init, jax.random.key(1), num_steps=600,
                                             step_size=s)
  var = std**2
  ula_var = var / (1 - s**2 / (4 * var))  # 1.33 and 4.27: +33% and +7%.
  np.testing.assert_allclose(z.mean(0), loc, atol=5 * float(np.sqrt(var.max() / n)))
  # Variance SE v * sqrt(2 / n) = 1% of v: 5 SE.
  np.testing.assert_allclose(z.var(0), var, rtol=0.05)
  np.testing.assert_allclose(z_ula.var(0), ula_var, rtol=0.05)  # The bias MALA removes.
  assert float(z.var(0)[0]) < 0.5 * (1.0 + float(ula_var[0]))
  assert 0.3 < float(diag['accept_rate'][-100:].mean()) < 0.99
  assert diag['log_prob'].shape == diag['grad_norm'].shape == (600,)


def test_laplace_target_moments_at_a_large_step():
  n, s, loc, b = 20_000, 0.8, 1.5, 1.0
  log_prob = lambda z: distributions.laplace_log_prob(z, loc, b)
  init = jax.random.normal(jax.random.key(2), (n, 1))
  z, _ = _jit(mala.sample, log_prob)(init, jax.random.key(3), num_steps=800, step_size=s)
  # Var 2 b^2: mean SE 0.010, variance SE sqrt(20 / n) b^2 = 0.032 (kurtosis 6).
  np.testing.assert_allclose(float(z.mean()), loc, atol=0.05)
  np.testing.assert_allclose(float(z.var()), 2 * b**2, rtol=0.08)
  np.testing.assert_allclose(float(jnp.median(z)), loc, atol=0.05)


def test_acceptance_falls_with_the_step_size_and_nonfinite_proposals_are_rejected():
  log_prob = lambda z: distributions.normal_log_prob(z, 0.0, 1.0)
  init = jax.random.normal(jax.random.key(4), (4000, 3))
  rates = []
  for s in (0.05, 1.0, 3.0):
    _, diag = _jit(mala.sample, log_prob)(init, jax.random.key(5), num_steps=50, step_size=s)
    rates.append(float(diag['accept_rate'].mean()))
  assert rates[0] > 0.99 and rates[0] > rates[1] > rates[2]
  # A target that is -inf beyond z > 0: no chain started below 0 ever crosses it.
  walled = lambda z: jnp.where(z[:, 0] > 0, -jnp.inf, -0.5 * z[:, 0]**2)
  start = -jnp.abs(jax.random.normal(jax.random.key(6), (2000, 1))) - 0.1
  z, _ = _jit(mala.sample, walled)(start, jax.random.key(7), num_steps=100, step_size=0.5)
  assert bool(jnp.all(z <= 0)) and bool(jnp.all(jnp.isfinite(z)))


def test_pytree_state_matches_concatenated_array():
  n = 2000
  std = jnp.array([0.5, 1.0, 2.0])
  array_lp = lambda z: distributions.normal_log_prob(z, 0.3, std)
  tree_lp = lambda t: array_lp(jnp.concatenate([t['a'][:, None], t['b']], axis=1))
  init = jax.random.normal(jax.random.key(8), (n, 3))
  kwargs = dict(num_steps=200, step_size=0.7)
  z, diag = _jit(mala.sample, array_lp)(init, jax.random.key(9), **kwargs)
  t, tree_diag = _jit(mala.sample, tree_lp)({'a': init[:, 0], 'b': init[:, 1:]},
                                            jax.random.key(9), **kwargs)
  np.testing.assert_allclose(jnp.concatenate([t['a'][:, None], t['b']], axis=1), z,
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(tree_diag['accept_rate'], diag['accept_rate'], atol=2 / n)


def test_trajectory_ends_at_the_final_state():
  log_prob = lambda z: -0.5 * jnp.sum(z**2, -1)
  z, diag = _jit(mala.sample, log_prob)(jnp.ones((5, 2)), jax.random.key(10), num_steps=7,
                                        step_size=0.5, keep_trajectory=True)
  assert diag['trajectory'].shape == (7, 5, 2)
  np.testing.assert_array_equal(diag['trajectory'][-1], z)


def test_mala_refuses_a_log_prob_that_is_not_per_example():
  with pytest.raises(ValueError, match=r'per-example log-densities \(3,\); got \(\)'):
    mala.sample(lambda z: -z.sum(), jnp.zeros((3, 2)), jax.random.key(0), num_steps=1,
                step_size=0.1)


def test_mala_refuses_no_noise():
  with pytest.raises(ValueError, match='noise_scale > 0'):
    mala.sample(lambda z: -z.sum(-1), jnp.zeros((2, 1)), jax.random.key(0), num_steps=1,
                step_size=0.1, noise_scale=0.0)


def test_registry_refuses_duplicates_and_names_the_registered_ones():
  assert {'langevin', 'mala'} <= set(samplers.SAMPLERS)
  assert samplers.get('langevin') is langevin.sample and samplers.get('mala') is mala.sample
  with pytest.raises(ValueError, match="'mala' is already registered"):
    samplers.register('mala')(langevin.sample)
  with pytest.raises(ValueError, match="unknown sampler 'hmc'.*'langevin', 'mala'"):
    samplers.get('hmc')


def test_a_registered_sampler_is_what_a_chain_runs():
  calls = []

  @samplers.register('test_gradient_ascent')
  def ascent(log_prob, init, key, *, num_steps, step_size, noise_scale=1.0,
             keep_trajectory=False, unroll=1):
    calls.append((num_steps, step_size, noise_scale, keep_trajectory, unroll))
    return langevin.sample(log_prob, init, key, num_steps=num_steps, step_size=step_size,
                           noise_scale=0.0, unroll=unroll)

  try:
    chain = samplers.Chain(num_steps=200, step_size=0.5, sampler='test_gradient_ascent')
    z, _ = chain(lambda z: -0.5 * jnp.sum((z - 3.0)**2, -1), jnp.zeros((4, 2)),
                 jax.random.key(0))
    np.testing.assert_allclose(z, 3.0, atol=1e-4)  # Noise-free ascent reaches the mode.
    assert calls == [(200, 0.5, 1.0, False, 1)]
  finally:
    del samplers.SAMPLERS['test_gradient_ascent']
