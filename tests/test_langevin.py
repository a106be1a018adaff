"""Tests for moe_ebm_jax.langevin: the sampler draws from known targets.

Unadjusted Langevin has no Metropolis-Hastings correction, so its stationary law is off by
O(s^2). For a Gaussian target of variance v the chain's stationary variance is exactly
v / (1 - s^2 / (4 v)) and its mean is exact; at s = 0.1 that bias is at most 1% of v here, below
the sampling tolerances (5 standard errors over the chains), which are what the assertions
budget for. Chains are run for many relaxation times, so what is left of the start is negligible.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from moe_ebm_jax.latent import langevin
from moe_ebm_jax.vae import distributions

_STATIC = ('num_steps', 'keep_trajectory')
_LOC = jnp.array([1.0, -2.0])
_STD = jnp.array([0.5, 1.0])  # Different variances per dimension.


def _jit_sample(log_prob):
  return jax.jit(functools.partial(langevin.sample, log_prob), static_argnames=_STATIC)


def _gauss_log_prob(z):
  return distributions.normal_log_prob(z, _LOC, _STD)


def test_gaussian_target_moments():
  n, s = 20_000, 0.1
  # 2000 steps of h = s^2 / 2 = 0.005 is 10 time units, 10 relaxation times of the slowest mean
  # (variance 1): the start's offset shrinks by e^-10.
  init = 2.0 * jax.random.normal(jax.random.key(0), (n, 2))
  z, _ = _jit_sample(_gauss_log_prob)(init, jax.random.key(1), num_steps=2000, step_size=s)
  var = _STD**2
  ula_var = var / (1 - s**2 / (4 * var))
  # Mean SE sqrt(v / n) <= 0.0071; variance SE v * sqrt(2 / n) = 1% of v.
  np.testing.assert_allclose(z.mean(0), _LOC, atol=5 * float(np.sqrt(var.max() / n)))
  np.testing.assert_allclose(z.var(0), var, rtol=0.05)
  np.testing.assert_allclose(z.var(0), ula_var, rtol=0.05)
  # Independent coordinates stay uncorrelated.
  assert abs(float(jnp.corrcoef(z.T)[0, 1])) < 5 / np.sqrt(n)


def test_laplace_target_moments():
  # Non-smooth at loc (score -sign(z - loc) / b); loc away from the start at 0.
  n, s, loc, b = 20_000, 0.1, 1.5, 1.0
  init = jax.random.normal(jax.random.key(2), (n, 1))
  log_prob = lambda z: distributions.laplace_log_prob(z, loc, b)
  # Spectral gap of the Laplace diffusion is 1 / (4 b^2): relaxation time 4 time units, 800
  # steps at s = 0.1; 4000 steps are 5 of them. Measured with 10^5 chains the stationary
  # variance is within 0.5% of 2 b^2 at this step size.
  z, _ = _jit_sample(log_prob)(init, jax.random.key(3), num_steps=4000, step_size=s)
  # Var 2 b^2 = 2: mean SE sqrt(2 / n) = 0.010; variance SE sqrt(20 / n) b^2 = 0.032 (kurtosis 6).
  np.testing.assert_allclose(float(z.mean()), loc, atol=0.05)
  np.testing.assert_allclose(float(z.var()), 2 * b**2, rtol=0.08)
  # The median of a Laplace is loc too; a sign error would push mass away from it.
  np.testing.assert_allclose(float(jnp.median(z)), loc, atol=0.05)


def test_pytree_state_matches_concatenated_array():
  n = 4000
  std = jnp.array([0.5, 1.0, 2.0])
  loc = jnp.array([1.0, -2.0, 0.5])
  array_lp = lambda z: distributions.normal_log_prob(z, loc, std)
  # The same target split into a scalar-per-example leaf and a 2-vector leaf.
  tree_lp = lambda t: array_lp(jnp.concatenate([t['a'][:, None], t['b']], axis=1))
  init = jax.random.normal(jax.random.key(4), (n, 3))
  tree_init = {'a': init[:, 0], 'b': init[:, 1:]}
  kwargs = dict(num_steps=3000, step_size=0.1)
  z, diag = _jit_sample(array_lp)(init, jax.random.key(5), **kwargs)
  t, tree_diag = _jit_sample(tree_lp)(tree_init, jax.random.key(5), **kwargs)
  assert t['a'].shape == (n,) and t['b'].shape == (n, 2)
  # Same key, same noise (drawn per example over the concatenated leaves): same chains.
  got = jnp.concatenate([t['a'][:, None], t['b']], axis=1)
  np.testing.assert_allclose(got, z, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(tree_diag['grad_norm'], diag['grad_norm'], rtol=1e-4)
  # And the right moments (variance SE sqrt(2 / n) = 2.2% of v; 3000 steps = 15 time units is
  # 3.75 relaxation times of the variance-4 mean: residual e^-3.75 * 0.5 = 0.012).
  np.testing.assert_allclose(got.mean(0), loc, atol=5 * float(std.max()) / np.sqrt(n) + 0.02)
  np.testing.assert_allclose(got.var(0), std**2, rtol=0.12)


def test_diagnostics_and_trajectory():
  n, steps, s = 64, 7, 0.1
  tree_lp = lambda t: (_gauss_log_prob(t['z'])
                       + distributions.laplace_log_prob(t['w'], 0.0, 1.0).sum(-1))
  init = {'z': jax.random.normal(jax.random.key(6), (n, 2)),
          'w': jax.random.normal(jax.random.key(7), (n, 3, 2))}
  final, diag = _jit_sample(tree_lp)(init, jax.random.key(8), num_steps=steps, step_size=s,
                                     keep_trajectory=True)
  assert set(diag) == {'log_prob', 'grad_norm', 'trajectory'}
  assert diag['log_prob'].shape == (steps,) and diag['grad_norm'].shape == (steps,)
  assert diag['trajectory']['z'].shape == (steps, n, 2)
  assert diag['trajectory']['w'].shape == (steps, n, 3, 2)
  for name in ('z', 'w'):
    np.testing.assert_array_equal(diag['trajectory'][name][-1], final[name])
  # Step 0 diagnostics are taken at the initial state.
  np.testing.assert_allclose(diag['log_prob'][0], tree_lp(init).mean(), rtol=1e-6)
  grad = jax.grad(lambda t: tree_lp(t).sum())(init)
  norm = jnp.sqrt(jnp.sum(grad['z']**2, axis=1) + jnp.sum(grad['w']**2, axis=(1, 2)))
  np.testing.assert_allclose(diag['grad_norm'][0], norm.mean(), rtol=1e-5)
  # Step k's diagnostics are taken at the state after step k - 1.
  prev = jax.tree.map(lambda x: x[2], diag['trajectory'])
  np.testing.assert_allclose(diag['log_prob'][3], tree_lp(prev).mean(), rtol=1e-5)
  # Without keep_trajectory there is no trajectory.
  _, diag = _jit_sample(tree_lp)(init, jax.random.key(8), num_steps=steps, step_size=s)
  assert set(diag) == {'log_prob', 'grad_norm'}


def test_noise_free_is_gradient_ascent_with_half_s_squared():
  # With noise_scale = 0 on a Gaussian: z_k - mu = (1 - s^2 / (2 v))^k (z_0 - mu), exactly.
  s, k = 0.3, 25
  init = jax.random.normal(jax.random.key(9), (5, 2))
  z, diag = _jit_sample(_gauss_log_prob)(init, jax.random.key(10), num_steps=k, step_size=s,
                                         noise_scale=0.0)
  want = _LOC + (1 - s**2 / (2 * _STD**2))**k * (init - _LOC)
  np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-5)
  assert bool(jnp.all(jnp.diff(diag['log_prob']) > 0))  # Ascends log pi.


def test_noise_scale_sets_the_noise_std():
  # A flat target: one step is pure noise with std noise_scale * s.
  n, s, noise_scale = 100_000, 0.2, 0.5
  flat = lambda z: jnp.zeros(z.shape[0])
  z, diag = _jit_sample(flat)(jnp.zeros((n, 1)), jax.random.key(11), num_steps=1, step_size=s,
                              noise_scale=noise_scale)
  np.testing.assert_allclose(float(z.std()), noise_scale * s, rtol=5 * np.sqrt(0.5 / n))
  np.testing.assert_allclose(diag['grad_norm'], [0.0])


def test_jit_matches_eager_and_accepts_traced_step_size():
  init = jax.random.normal(jax.random.key(12), (16, 2))
  key = jax.random.key(13)
  eager, eager_diag = langevin.sample(_gauss_log_prob, init, key, num_steps=5, step_size=0.1)
  traces = []
  counting_lp = lambda z: traces.append(1) or _gauss_log_prob(z)  # Python runs only when tracing.
  jitted = _jit_sample(counting_lp)
  out, diag = jitted(init, key, num_steps=5, step_size=jnp.float32(0.1))
  np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(diag['log_prob'], eager_diag['log_prob'], rtol=1e-5)
  # A new step size is traced, not a recompilation; the results move with it.
  out2, _ = jitted(init, key, num_steps=5, step_size=jnp.float32(0.2))
  assert len(traces) == 1
  assert not np.allclose(out2, out)
  # Differentiable through the chain unless the caller stops gradients.
  g = jax.grad(lambda x: langevin.sample(_gauss_log_prob, x, key, num_steps=3,
                                         step_size=0.1)[0].sum())(init)
  np.testing.assert_allclose(g, np.full_like(init, 1.0) * (1 - 0.01 / (2 * _STD**2))**3,
                             rtol=1e-5)
