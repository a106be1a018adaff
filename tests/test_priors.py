"""Priors as components: the fixed and the energy prior under one interface, the registry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax import model_state
from moe_ebm_jax import priors
from moe_ebm_jax import samplers


def test_fixed_prior_is_the_standard_family_and_learns_nothing():
  z = jnp.array([[0.5, -1.0], [2.0, 0.0]])
  laplace = priors.FixedPrior('laplace')
  np.testing.assert_allclose(laplace.log_prob({}, 2.5)(z),
                             -np.abs(z).sum(-1) - 2 * math.log(2), rtol=1e-6)
  gauss = priors.FixedPrior('gaussian')
  np.testing.assert_allclose(gauss.log_prob({}, 2.5)(z),
                             -0.5 * (z ** 2).sum(-1) - math.log(2 * math.pi), rtol=1e-6)
  draws, diag = gauss.sample({}, jax.random.PRNGKey(0), 20_000, 2)
  assert draws.shape == (20_000, 2) and diag == {}
  np.testing.assert_allclose(np.var(np.asarray(draws), 0), [1, 1], atol=0.05)
  grads, metrics, ok_loss, ok_energy = gauss.learn({}, None, None, None, None, None)
  assert grads == {} and metrics == {} and bool(ok_loss) and bool(ok_energy)


@pytest.mark.parametrize('weight', ['beta', 'one'])
def test_energy_prior_log_prob_weights_f_a_as_configured(weight):
  config = config_lib.base_config('moe_ebm')
  config.ebm.energy_weight = weight
  model = model_state.make_model(config)
  prior = model.prior
  assert isinstance(prior, priors.EnergyPrior)
  assert prior.prior_chain == samplers.Chain(config.ebm.prior_steps, config.ebm.prior_step_size,
                                             config.ebm.noise_scale, config.ebm.sampler, True)
  assert prior.posterior_chain.num_steps == config.ebm.posterior_steps
  params = prior.init(jax.random.PRNGKey(0), model.vae.latent_z)
  z = jax.random.normal(jax.random.PRNGKey(1), (4, model.vae.latent_z))
  f = model.energy.apply(params, z)
  base = -jnp.abs(z).sum(-1) - model.vae.latent_z * math.log(2)
  want = f + base if weight == 'beta' else f / 2.5 + base
  np.testing.assert_allclose(prior.log_prob(params, 2.5)(z), want, rtol=1e-5)


def test_prior_registry_names_the_config_choices_and_refuses_duplicates():
  assert {'fixed', 'ebm'} <= set(priors.PRIORS)
  assert isinstance(model_state.make_model(config_lib.base_config('mvae')).prior,
                    priors.FixedPrior)
  with pytest.raises(ValueError, match="'ebm' is already registered"):
    priors.register('ebm')(lambda model: None)
  config = config_lib.base_config('mmvaeplus')
  config.model.prior = 'vamp'
  with pytest.raises(ValueError, match="model.prior='vamp' is not one of"):
    config_lib.validate(config)
  config = config_lib.base_config('mvae')
  config.model.prior = 'ebm'
  with pytest.raises(ValueError, match="objective 'mvae' takes no prior but its fixed one"):
    config_lib.validate(config)
