"""The Gaussian-mixture prior: its density against numpy, its samples against its density, and
EM against known mixtures."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax.latent import mixture
from moe_ebm_jax.latent import priors

WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[-4.0, 0.0], [3.0, 3.0], [2.0, -4.0]])
COVS = np.array([[[1.0, 0.6], [0.6, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.5, -0.7], [-0.7, 0.8]]])


def known_params(covs=COVS):
  return {'logits': jnp.log(jnp.asarray(WEIGHTS, jnp.float32)),
          'means': jnp.asarray(MEANS, jnp.float32),
          'scale_tril': jnp.asarray(np.linalg.cholesky(covs), jnp.float32)}


def draws(n, covs=COVS, seed=0):
  rng = np.random.default_rng(seed)
  k = rng.choice(3, size=n, p=WEIGHTS)
  return np.stack([rng.multivariate_normal(MEANS[i], covs[i]) for i in k]).astype(np.float32)


def numpy_log_prob(z):
  """The mixture density from its formula, in float64."""
  out = []
  for w, mu, cov in zip(WEIGHTS, MEANS, COVS):
    diff = z - mu
    quad = np.einsum('ni,ij,nj->n', diff, np.linalg.inv(cov), diff)
    out.append(np.log(w) - 0.5 * quad - 0.5 * np.log(np.linalg.det(2 * np.pi * cov)))
  return np.logaddexp.reduce(np.stack(out), axis=0)


def test_log_prob_is_the_mixture_density():
  z = np.random.default_rng(1).normal(size=(50, 2)) * 3
  np.testing.assert_allclose(mixture.log_prob(known_params(), jnp.asarray(z, jnp.float32)),
                             numpy_log_prob(z), rtol=1e-4, atol=1e-4)


def test_tril_inverse_is_numpys_inverse_for_a_batch_of_8d_factors():
  a = np.random.default_rng(2).normal(size=(5, 8, 8))
  tril = np.linalg.cholesky(a @ a.transpose(0, 2, 1) + 8 * np.eye(8))
  np.testing.assert_allclose(mixture.tril_inverse(jnp.asarray(tril, jnp.float32)),
                             np.linalg.inv(tril), rtol=1e-4, atol=1e-5)


def test_the_compiled_density_calls_no_lapack():
  # A LAPACK triangular solve here hung experiments/true_bound.py on the 2-core machines: two
  # of them at once in one program held XLA's whole CPU thread pool, each waiting for the other.
  z = jnp.zeros((64, 16, 2))
  text = jax.jit(mixture.log_prob).lower(known_params(), z).as_text()
  assert 'custom_call' not in text, [line for line in text.splitlines() if 'custom_call' in line]
  solve = lambda t, b: jax.scipy.linalg.solve_triangular(t, b, lower=True)
  # The check can fail: the solver this replaced does lower to a custom call.
  assert 'custom_call' in jax.jit(solve).lower(known_params()['scale_tril'],
                                               jnp.zeros((3, 2, 4))).as_text()


def test_samples_follow_the_density_moments_and_histogram():
  params = known_params()
  z = np.asarray(mixture.sample(params, jax.random.PRNGKey(0), 200_000), np.float64)
  mean = (WEIGHTS[:, None] * MEANS).sum(0)
  second = sum(w * (c + np.outer(m, m)) for w, m, c in zip(WEIGHTS, MEANS, COVS))
  np.testing.assert_allclose(z.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(np.cov(z, rowvar=False), second - np.outer(mean, mean), atol=0.08)
  # The density on a grid integrates to 1, and the samples' histogram matches its cells.
  edges = np.linspace(-12, 12, 241)
  mid = (edges[:-1] + edges[1:]) / 2
  grid = np.stack(np.meshgrid(mid, mid, indexing='ij'), -1).reshape(-1, 2)
  cell = (edges[1] - edges[0]) ** 2
  p = np.exp(np.asarray(mixture.log_prob(params, jnp.asarray(grid, jnp.float32)), np.float64))
  assert p.sum() * cell == pytest.approx(1.0, abs=2e-3)
  coarse = np.linspace(-12, 12, 25)
  hist, _, _ = np.histogram2d(z[:, 0], z[:, 1], bins=[coarse, coarse])
  mass, _, _ = np.histogram2d(grid[:, 0], grid[:, 1], bins=[coarse, coarse], weights=p * cell)
  assert 0.5 * np.abs(hist / len(z) - mass).sum() < 0.01


def _match(fitted, truth):
  """Fitted components reordered to the true ones (nearest means)."""
  order = [int(np.argmin(np.square(np.asarray(fitted['means']) - m).sum(1))) for m in truth]
  assert sorted(order) == [0, 1, 2]
  return order


@pytest.mark.parametrize('covariance', ['full', 'diag'])
def test_em_recovers_a_known_mixture(covariance):
  covs = COVS if covariance == 'full' else np.stack([np.diag(np.diag(c)) for c in COVS])
  params, info = mixture.fit(draws(20_000, covs), 3, jax.random.PRNGKey(0),
                             covariance=covariance)
  assert info['converged'] and info['iterations'] < 500
  order = _match(params, MEANS)
  weights = np.asarray(jax.nn.softmax(params['logits']))[order]
  tril = np.asarray(params['scale_tril'])[order]
  np.testing.assert_allclose(weights, WEIGHTS, atol=0.015)
  np.testing.assert_allclose(np.asarray(params['means'])[order], MEANS, atol=0.06)
  np.testing.assert_allclose(tril @ np.swapaxes(tril, 1, 2), covs, atol=0.08)
  if covariance == 'diag':
    assert np.all(tril[:, 0, 1] == 0) and np.all(tril[:, 1, 0] == 0)


def test_held_out_likelihood_prefers_the_true_number_of_components():
  params, info = mixture.fit_selecting(draws(6000), (1, 2, 3), jax.random.PRNGKey(1))
  scores = info['held_out']
  assert scores[3] > scores[2] > scores[1] and info['num_components'] == 3
  assert params['means'].shape == (3, 2)


def test_the_prior_interface():
  prior = mixture.GaussianMixturePrior(3)
  params = prior.init(jax.random.PRNGKey(0), 4)
  z = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
  # Untrained: every component N(0, I), so the mixture is N(0, I).
  np.testing.assert_allclose(prior.log_prob(params, 2.5)(z),
                             -0.5 * (z ** 2).sum(-1) - 2 * math.log(2 * math.pi), rtol=1e-5)
  update = priors.PriorUpdate(*prior.learn(params, {}, None, None, None, None, None))
  assert all(not np.any(g) for g in jax.tree.leaves(update.grads))
  assert not prior.refines_posterior
  assert prior.sample(params, jax.random.PRNGKey(2), 7, 4)[0].shape == (7, 4)
