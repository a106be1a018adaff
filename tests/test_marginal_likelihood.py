"""The importance-sampled log p(X): over a discrete data space p(X) sums to one, for any
parameters and any normalised prior on z; an unnormalised prior shows as its constant."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax.evaluators import marginal_likelihood
from moe_ebm_jax.latent import ebm
from moe_ebm_jax.vae import distributions as dists
from moe_ebm_jax.vae import modalities as mods
from moe_ebm_jax.vae import models
from moe_ebm_jax.vae import networks


def _two_label_vae(model):
  """Two categorical modalities of 3 classes: 9 possible X, whose p(X) must sum to one."""
  config = config_lib.base_config(model, 'synthetic_mixture')
  config.model.mlp_hidden = (8,)
  if config.model.latent_w:
    config.model.latent_w = 1
  config.model.latent_z = 1
  specs = (mods.label_spec('a', 3), mods.label_spec('b', 3))
  vae = models.make_vae(config, specs)
  pairs = np.array(list(itertools.product(range(3), range(3))), np.int32)
  return vae, vae.init(jax.random.PRNGKey(1)), {'a': jnp.asarray(pairs[:, 0]),
                                                'b': jnp.asarray(pairs[:, 1])}


def _total_probability(vae, params, x, log_prior_z):
  log_p = marginal_likelihood.log_marginal_likelihood(
      vae, params, x, jax.random.PRNGKey(0), log_prior_z, num_samples=20_000, chunk=2_000)
  return float(jnp.exp(log_p).sum())  # exp(log-mean-exp) is the unbiased estimate of p(X).


@pytest.mark.parametrize('model', ['mmvaeplus', 'mvae'])
def test_p_of_every_possible_x_sums_to_one_under_the_fixed_prior(model):
  vae, params, x = _two_label_vae(model)
  fixed = lambda z: dists.log_prob(vae.distribution, z, 0.0, 1.0)
  assert _total_probability(vae, params, x, fixed) == pytest.approx(1.0, abs=0.03)
  # A prior off by a constant c (not normalised) moves the total to e^c: the check can fail.
  shifted = lambda z: fixed(z) + 0.3
  assert _total_probability(vae, params, x, shifted) == pytest.approx(np.exp(0.3), abs=0.04)


def test_p_of_every_possible_x_sums_to_one_under_a_normalised_ebm_prior():
  vae, params, x = _two_label_vae('ebm_mmvaeplus')
  energy = networks.EnergyMLP(hidden=(8,))
  ebm_params = energy.init(jax.random.PRNGKey(2), jnp.zeros((1, 1)))
  base = ebm.Base('gaussian', 2.0)
  f = lambda z: 3.0 * energy.apply(ebm_params, z)  # A tilt far from flat.
  log_z = ebm.log_partition_grid(f, base, 1)
  assert abs(float(log_z)) > 0.1
  log_prior = lambda z: f(z) + base.log_prob(z) - log_z
  assert _total_probability(vae, params, x, log_prior) == pytest.approx(1.0, abs=0.03)


def test_more_samples_tighten_the_bound_and_chunks_are_checked():
  vae, params, x = _two_label_vae('mmvaeplus')
  fixed = lambda z: dists.log_prob(vae.distribution, z, 0.0, 1.0)
  few = marginal_likelihood.log_marginal_likelihood(vae, params, x, jax.random.PRNGKey(0), fixed,
                                                    num_samples=1, chunk=1)
  many = marginal_likelihood.log_marginal_likelihood(vae, params, x, jax.random.PRNGKey(0),
                                                     fixed, num_samples=4000, chunk=1000)
  assert float(few.mean()) < float(many.mean())
  with pytest.raises(ValueError, match='multiple of chunk'):
    marginal_likelihood.log_marginal_likelihood(vae, params, x, jax.random.PRNGKey(0), fixed,
                                                num_samples=10, chunk=3)
