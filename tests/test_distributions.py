"""Tests for moe_ebm_jax.distributions against scipy.stats and direct numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from moe_ebm_jax.vae import distributions

# float32 arithmetic on O(10) log-densities summed over 5 dims.
_RTOL, _ATOL = 1e-5, 1e-4


def _inputs(seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(4, 3, 5)).astype(np.float32) * 2.0  # batch (4, 3), event 5
  loc = rng.normal(size=(5,)).astype(np.float32)  # broadcast over the batch
  scale = rng.uniform(0.2, 2.0, size=(3, 5)).astype(np.float32)
  return x, loc, scale


@pytest.mark.parametrize('name, scipy_dist', [('laplace', stats.laplace), ('normal', stats.norm)])
def test_log_prob_matches_scipy(name, scipy_dist):
  x, loc, scale = _inputs()
  want = scipy_dist.logpdf(x.astype(np.float64), loc, scale)  # (4, 3, 5)
  elementwise = getattr(distributions, f'{name}_log_prob_elementwise')(x, loc, scale)
  summed = getattr(distributions, f'{name}_log_prob')(x, loc, scale)
  assert elementwise.shape == (4, 3, 5)
  assert summed.shape == (4, 3)
  assert summed.dtype == jnp.float32
  np.testing.assert_allclose(elementwise, want, rtol=_RTOL, atol=_ATOL)
  np.testing.assert_allclose(summed, want.sum(-1), rtol=_RTOL, atol=_ATOL)


def test_log_prob_jit_and_grad():
  x, loc, scale = _inputs(1)
  got = jax.jit(distributions.laplace_log_prob)(x, loc, scale)
  np.testing.assert_allclose(got, stats.laplace.logpdf(x, loc, scale).sum(-1), rtol=_RTOL,
                             atol=_ATOL)
  # d/dx log N(x; mu, sigma) = -(x - mu) / sigma^2.
  grad = jax.grad(lambda v: distributions.normal_log_prob(v, loc, scale).sum())(x)
  np.testing.assert_allclose(grad, -(x - loc) / scale**2, rtol=1e-5, atol=1e-5)


def test_mixture_log_prob_matches_numpy():
  rng = np.random.default_rng(2)
  log_probs = rng.normal(size=(5, 7), scale=3.0).astype(np.float32)  # (M, B)
  want = np.log(np.mean(np.exp(log_probs.astype(np.float64)), axis=0))
  got = distributions.mixture_log_prob(jnp.asarray(log_probs), axis=0)
  assert got.shape == (7,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Another axis, and values where a naive exp underflows to 0 in float32.
  shifted = log_probs.T - 1000.0  # (B, M)
  got = distributions.mixture_log_prob(jnp.asarray(shifted), axis=1)
  np.testing.assert_allclose(got, want - 1000.0, rtol=1e-6)


def test_mixture_of_identical_components_is_the_component():
  lp = jnp.array([-3.0, 0.5, 7.0])
  got = distributions.mixture_log_prob(jnp.stack([lp] * 4), axis=0)
  np.testing.assert_allclose(got, lp, rtol=1e-6)


@pytest.mark.parametrize('name', ['laplace', 'normal'])
def test_sample_moments(name):
  loc = jnp.array([1.5, -2.0, 0.0], jnp.float32)
  scale = jnp.array([0.5, 1.0, 2.0], jnp.float32)
  n = 200_000
  draws = getattr(distributions, f'{name}_sample')(
      jax.random.key(3), jnp.broadcast_to(loc, (n, 3)), scale)
  assert draws.shape == (n, 3) and draws.dtype == jnp.float32
  # Var of Laplace(loc, b) is 2 b^2; of N(loc, s) it is s^2.
  var = 2.0 * scale**2 if name == 'laplace' else scale**2
  # Standard errors: mean sqrt(var / n); sample variance var * sqrt(k / n) with k = 5 for the
  # Laplace (excess kurtosis 3) and 2 for the Gaussian. Allow 5 standard errors.
  k = 5.0 if name == 'laplace' else 2.0
  np.testing.assert_allclose(draws.mean(0), loc, atol=5 * float(np.sqrt(var.max() / n)))
  np.testing.assert_allclose(draws.var(0), var, rtol=5 * np.sqrt(k / n))


@pytest.mark.parametrize('name', ['laplace', 'normal'])
def test_sample_is_reparameterised(name):
  sample_fn = getattr(distributions, f'{name}_sample')
  key = jax.random.key(4)
  loc, scale = jnp.array([0.3, -1.0]), jnp.array([0.7, 2.0])
  draws = sample_fn(key, loc, scale)
  # d sample / d loc = 1 and d sample / d scale = the standard noise (sample - loc) / scale.
  dloc = jax.grad(lambda l: sample_fn(key, l, scale).sum())(loc)
  dscale = jax.grad(lambda s: sample_fn(key, loc, s).sum())(scale)
  np.testing.assert_allclose(dloc, np.ones(2), rtol=1e-6)
  np.testing.assert_allclose(dscale, (draws - loc) / scale, rtol=1e-5, atol=1e-6)


def test_softmax_scale_sums_to_dim():
  logits = jax.random.normal(jax.random.key(5), (6, 32)) * 4.0
  eps = 1e-6
  scale = distributions.softmax_scale(logits, eps=eps)
  assert scale.shape == (6, 32)
  assert bool(jnp.all(scale >= eps))
  np.testing.assert_allclose(scale.sum(-1), np.full(6, 32 * (1 + eps)), rtol=1e-5)
  # Zero logits give the unit scale of the prior (plus eps).
  np.testing.assert_allclose(distributions.softmax_scale(jnp.zeros((2, 8))), 1 + eps, rtol=1e-6)
