"""The coupling-flow prior: invertible, a normalised density that its samples follow, and a fit
that approaches a known density."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax.latent import flow
from moe_ebm_jax.latent import priors

from test_mixture import draws
from test_mixture import numpy_log_prob


def perturbed(prior, dim, seed=1, size=0.3):
  """Parameters away from the identity map the flow starts at."""
  params = prior.init(jax.random.PRNGKey(0), dim)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + size * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def test_forward_and_inverse_are_inverse_maps():
  prior = flow.FlowPrior(4, (16,))
  params = perturbed(prior, 3)
  u = jax.random.normal(jax.random.PRNGKey(2), (64, 3))
  z = prior.flow.apply(params, u, method=flow.CouplingFlow.forward)
  back, _ = prior.flow.apply(params, z, method=flow.CouplingFlow.inverse)
  assert float(jnp.abs(z - u).max()) > 0.1  # Not the identity.
  np.testing.assert_allclose(back, u, atol=1e-5)


@pytest.mark.parametrize('dim', [1, 2])
def test_the_density_integrates_to_one_and_its_samples_follow_it(dim):
  prior = flow.FlowPrior(4, (16,))
  params = perturbed(prior, dim, size=0.1)
  edges = np.linspace(-15, 15, 601 if dim == 2 else 6001)
  mid = (edges[:-1] + edges[1:]) / 2
  grid = (np.stack(np.meshgrid(mid, mid, indexing='ij'), -1).reshape(-1, 2) if dim == 2
          else mid[:, None])
  cell = (edges[1] - edges[0]) ** dim
  p = np.exp(np.asarray(prior.log_prob(params, 1.0)(jnp.asarray(grid, jnp.float32)), np.float64))
  z = np.asarray(prior.sample(params, jax.random.PRNGKey(3), 100_000, dim)[0], np.float64)
  inside = np.mean(np.all(np.abs(z) < 15, axis=1))
  assert inside > 0.995  # The grid holds (nearly) all the mass, so it must integrate to ~1.
  assert p.sum() * cell == pytest.approx(1.0, abs=5e-3)
  coarse = np.linspace(-15, 15, 31)
  if dim == 2:
    hist = np.histogram2d(z[:, 0], z[:, 1], bins=[coarse, coarse])[0]
    mass = np.histogram2d(grid[:, 0], grid[:, 1], bins=[coarse, coarse], weights=p * cell)[0]
  else:
    hist = np.histogram(z[:, 0], bins=coarse)[0]
    mass = np.histogram(grid[:, 0], bins=coarse, weights=p * cell)[0]
  assert 0.5 * np.abs(hist / len(z) - mass).sum() < 0.015


def test_a_fit_approaches_a_known_density():
  """On 8,000 draws of a 3-component 2-D mixture: held-out NLL near the true density's, far
  below the best single Gaussian's."""
  prior = flow.FlowPrior(6, (64, 64))
  params, info = flow.fit(draws(8000), jax.random.PRNGKey(0), prior, steps=2000)
  test = draws(4000, seed=5)
  true_nll = -numpy_log_prob(test.astype(np.float64)).mean()
  flow_nll = -float(prior.log_prob(params, 1.0)(jnp.asarray(test)).mean())
  mean, cov = test.mean(0), np.cov(test, rowvar=False)
  diff = test - mean
  gauss_nll = np.mean(0.5 * np.einsum('ni,ij,nj->n', diff, np.linalg.inv(cov), diff)
                      + 0.5 * np.log(np.linalg.det(2 * np.pi * cov)))
  assert true_nll <= flow_nll < true_nll + 0.15 and flow_nll < gauss_nll - 1.0
  assert abs(info['held_out_nll'] - info['train_nll']) < 0.1  # No overfitting at this size.
  update = priors.PriorUpdate(*prior.learn(params, {}, None, None, None, None, None))
  assert all(not np.any(g) for g in jax.tree.leaves(update.grads))  # Fitted, not trained.
