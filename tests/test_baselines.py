"""The baselines' objectives and aggregations against independent numpy computations, and every
model's smoke config trained and evaluated end to end."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax import model_state
from moe_ebm_jax.vae import aggregation
from moe_ebm_jax.vae import objectives

from test_train import smoke_config


def test_product_of_experts_equals_the_normalised_product_of_densities():
  # Multiply the densities on a fine grid and read off mean and variance numerically.
  rng = np.random.default_rng(0)
  loc = rng.normal(size=(3, 1, 2)).astype(np.float32)
  scale = rng.uniform(0.3, 1.5, size=(3, 1, 2)).astype(np.float32)
  mask = np.array([True, False, True])
  for prior_expert in (False, True):
    got_loc, got_scale = aggregation.product_of_experts(loc, scale, mask, prior_expert)
    grid = np.linspace(-8, 8, 200_001)
    for d in range(2):
      log_density = sum(-0.5 * ((grid - loc[m, 0, d]) / scale[m, 0, d])**2
                        for m in range(3) if mask[m])
      if prior_expert:
        log_density = log_density - 0.5 * grid**2
      p = np.exp(log_density - log_density.max())
      p /= p.sum()
      mean = (p * grid).sum()
      std = np.sqrt((p * (grid - mean)**2).sum())
      assert float(got_loc[0, d]) == pytest.approx(mean, abs=1e-4)
      assert float(got_scale[0, d]) == pytest.approx(std, abs=1e-4)


def test_product_of_experts_adds_the_references_eps_to_each_variance():
  # Experts of zero scale (the references' PoE: var = exp(logvar) + 1e-8): the product of two
  # is finite, at their mean, with variance 1e-8 / 2; a 1e-3 scale gets 1e-8 on its 1e-6.
  loc = jnp.array([[[1.0]], [[3.0]]])
  got_loc, got_scale = aggregation.product_of_experts(loc, jnp.zeros((2, 1, 1)), [True, True])
  assert float(got_loc[0, 0]) == pytest.approx(2.0, rel=1e-6)
  assert float(got_scale[0, 0]) == pytest.approx(np.sqrt(0.5e-8), rel=1e-5)
  _, one = aggregation.product_of_experts(loc[:1], jnp.full((1, 1, 1), 1e-3), [True])
  assert float(one[0, 0]) == pytest.approx(np.sqrt(1e-6 + 1e-8), rel=1e-5)


def test_mopoe_draws_subsets_of_the_observed_modalities_uniformly():
  # Experts with distinct tiny-variance means: the PoE mean identifies the drawn subset.
  m, b = 3, 6000
  means = np.array([1.0, 10.0, 100.0], np.float32)
  loc = jnp.broadcast_to(jnp.asarray(means)[:, None, None], (m, b, 1))
  scale = jnp.full((m, b, 1), 1e-3)
  mask = jnp.array([True, False, True])
  z = np.asarray(aggregation.sample('mopoe', loc, scale, mask, jax.random.PRNGKey(0),
                                    'gaussian'))[:, 0]
  expected = {1.0: 1 / 3, 100.0: 1 / 3, 50.5: 1 / 3}  # {m0}, {m2}, {m0, m2} (equal precisions).
  for value, share in expected.items():
    assert np.mean(np.abs(z - value) < 0.1) == pytest.approx(share, abs=0.03)
  assert len(aggregation.nonempty_subsets(5)) == 31


# ----------------------------------------------------------------------------- objectives
# With all-zero decoder params every decode is 0, so log p(x_d | z) is the constant
# sum_pixels log Laplace(x; 0, 0.75) and each bound is closed form in the encoder's outputs.


def np_kl_normal(loc, scale, loc2=0.0, scale2=1.0):
  loc2 = np.broadcast_to(loc2, np.shape(loc))
  scale2 = np.broadcast_to(scale2, np.shape(scale))
  total = 0.0
  for mu1, s1, mu2, s2 in zip(loc.ravel(), scale.ravel(), loc2.ravel(), scale2.ravel()):
    total += np.log(s2 / s1) + (s1**2 + (mu1 - mu2)**2) / (2 * s2**2) - 0.5
  return total


def np_poe(locs, scales, prior_expert):
  precisions = [1 / s**2 for s in scales] + ([np.ones_like(scales[0])] if prior_expert else [])
  means = list(locs) + ([np.zeros_like(locs[0])] if prior_expert else [])
  total = sum(precisions)
  return sum(p * mu for p, mu in zip(precisions, means)) / total, 1 / np.sqrt(total)


def np_bound(name, loc, scale, recon, beta):
  """One example: loc, scale (M, D); recon (M,) the constant log-likelihoods."""
  m = len(loc)
  if name == 'mvae':
    joint = np_poe(loc, scale, True)
    bound = recon.sum() - beta * np_kl_normal(*joint)
    for i in range(m):
      bound += recon[i] - beta * np_kl_normal(*np_poe(loc[i:i + 1], scale[i:i + 1], True))
    return bound
  if name == 'mmjsd':
    f_loc, f_scale = np_poe(loc, scale, True)
    js = sum(np_kl_normal(loc[i], scale[i], f_loc, f_scale) for i in range(m))
    js += np_kl_normal(np.zeros_like(f_loc), np.ones_like(f_scale), f_loc, f_scale)
    return recon.sum() - beta * js / (m + 1)
  if name == 'mopoe':
    subsets = [s for k in range(1, m + 1) for s in itertools.combinations(range(m), k)]
    kl = np.mean([np_kl_normal(*np_poe(loc[list(s)], scale[list(s)], False)) for s in subsets])
    return recon.sum() - beta * kl
  raise ValueError(name)


@pytest.mark.parametrize('name', ['mvae', 'mmjsd', 'mopoe'])
def test_gaussian_objectives_equal_a_numpy_computation(polymnist_dir, name):
  config = smoke_config(polymnist_dir, name)
  model = model_state.make_model(config)
  params = model.vae.init(jax.random.PRNGKey(0))
  params['decoders'] = jax.tree.map(jnp.zeros_like, params['decoders'])
  images = np.random.default_rng(1).random((3, 5, 28, 28, 3)).astype(np.float32)
  loss, aux = objectives.get(name).fn(model.vae, params, jnp.asarray(images),
                                      jax.random.PRNGKey(2), beta=2.5, num_samples=1,
                                      estimator='elbo', log_prior_z=None)
  post = model.vae.encode(params, jnp.asarray(images))
  loc = np.asarray(post.z_loc, np.float64)
  scale = np.asarray(post.z_scale, np.float64)
  recon = (-np.abs(images.astype(np.float64)) / 0.75 - np.log(1.5)).sum(axis=(2, 3, 4))  # (B, M)
  bounds = [np_bound(name, loc[:, b], scale[:, b], recon[b], 2.5) for b in range(3)]
  assert float(loss) == pytest.approx(-np.mean(bounds), rel=1e-5)
  assert float(aux.metrics['bound']) == pytest.approx(np.mean(bounds), rel=1e-5)
