"""Priors as components: the fixed and the energy prior under one interface, the registry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax import model_state
from moe_ebm_jax.latent import ebm
from moe_ebm_jax.latent import priors
from moe_ebm_jax.latent import samplers


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
  assert gauss.init_state(jax.random.PRNGKey(0), 2) == {}
  grads, state, metrics, ok_loss, ok_energy = gauss.learn({}, {}, None, None, None, None, None)
  assert grads == {} and state == {} and metrics == {} and bool(ok_loss) and bool(ok_energy)


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
  f = model.prior.energy.apply(params, z)
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


def _persistent_prior(num_chains, reinit, steps):
  from moe_ebm_jax.vae import networks  # pylint: disable=g-import-not-at-top
  return priors.EnergyPrior(networks.EnergyMLP(hidden=(8,)), samplers.Chain(steps, 0.4),
                            samplers.Chain(0, 0.1), posterior_sampler='q', p0=ebm.Base('gaussian'),
                            persistent_chains=num_chains, persistent_reinit=reinit)


def _fake_aux(batch, dim):
  """What learn reads of the objective's aux with posterior_sampler 'q': z_loc's batch size and
  the posterior samples latents.z (M, K, B, D)."""
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  z = jnp.ones((2, 1, batch, dim))
  return SimpleNamespace(post=SimpleNamespace(z_loc=z[:, 0]), latents=SimpleNamespace(z=z))


def _learn(prior, params, state, key, batch=3):
  keys = tuple(jax.random.split(key, 3))
  return prior.learn(params, state, keys, SimpleVae(), None, None, _fake_aux(batch, 2))


class SimpleVae:
  latent_z = 2


def test_persistent_chains_continue_the_next_batch_in_turn_and_wrap():
  prior = _persistent_prior(5, 0.0, steps=0)  # No moves: the chains' start is what comes out.
  params = prior.init(jax.random.PRNGKey(0), 2)
  state = prior.init_state(jax.random.PRNGKey(1), 2)
  assert state['chains'].shape == (5, 2) and int(state['cursor']) == 0
  state = {'chains': jnp.arange(10.0).reshape(5, 2), 'cursor': jnp.array(4, jnp.int32)}
  grads, new, metrics, ok_loss, ok_energy = _learn(prior, params, state, jax.random.PRNGKey(2))
  assert int(new['cursor']) == 2  # (4 + 3) mod 5.
  # With 0 steps the prior samples are chains 4, 0, 1 exactly: the EBM loss's prior term.
  z_prior = np.asarray(state['chains'])[[4, 0, 1]]
  f = lambda z: prior.energy.apply(params, jnp.asarray(z)).mean()
  np.testing.assert_allclose(metrics['energy_prior'], -f(z_prior), rtol=1e-6)
  np.testing.assert_array_equal(new['chains'], state['chains'])
  assert bool(ok_loss) and bool(ok_energy) and jax.tree.structure(grads) == jax.tree.structure(
      params)


def test_persistent_chains_move_only_their_batch_and_restart_from_p0():
  prior = _persistent_prior(6, 0.0, steps=3)
  params = prior.init(jax.random.PRNGKey(0), 2)
  state = {'chains': jnp.full((6, 2), 5.0), 'cursor': jnp.array(0, jnp.int32)}
  _, new, _, _, _ = _learn(prior, params, state, jax.random.PRNGKey(2))
  moved = np.abs(np.asarray(new['chains']) - 5.0).sum(-1) > 0
  np.testing.assert_array_equal(moved, [True] * 3 + [False] * 3)
  # Restarting every chain (reinit 1) with no moves returns fresh p0 = N(0, I) draws, not the
  # chains at 5: over many chains, mean ~ 0 and variance ~ 1.
  prior = _persistent_prior(4000, 1.0, steps=0)
  state = {'chains': jnp.full((4000, 2), 5.0), 'cursor': jnp.array(0, jnp.int32)}
  _, new, _, _, _ = _learn(prior, params, state, jax.random.PRNGKey(3), batch=4000)
  chains = np.asarray(new['chains'])
  np.testing.assert_allclose(chains.mean(0), [0, 0], atol=0.06)
  np.testing.assert_allclose(chains.var(0), [1, 1], atol=0.08)
  # Restarting a fraction 0.25 restarts about that many.
  prior = _persistent_prior(4000, 0.25, steps=0)
  _, new, _, _, _ = _learn(prior, params, state, jax.random.PRNGKey(4), batch=4000)
  assert abs(np.mean(np.asarray(new['chains'])[:, 0] != 5.0) - 0.25) < 0.03


def test_generation_draws_its_chains_from_the_persistent_state():
  prior = _persistent_prior(4, 0.0, steps=0)
  params = prior.init(jax.random.PRNGKey(0), 2)
  chains = jnp.arange(8.0).reshape(4, 2)
  z, _ = prior.sample(params, jax.random.PRNGKey(1), 4, 2, state={'chains': chains,
                                                                 'cursor': jnp.array(0)})
  # Four draws of four chains without replacement: each chain once.
  np.testing.assert_array_equal(np.sort(np.asarray(z), 0), np.asarray(chains))
  z, _ = prior.sample(params, jax.random.PRNGKey(1), 9, 2, state={'chains': chains,
                                                                 'cursor': jnp.array(0)})
  assert set(map(tuple, np.asarray(z).tolist())) <= set(map(tuple, np.asarray(chains).tolist()))


def test_persistent_chains_config_is_validated():
  config = config_lib.base_config('moe_ebm')
  config.ebm.persistent_chains = config.batch_size - 1
  with pytest.raises(ValueError, match='at least the batch size'):
    config_lib.validate(config)
  config.ebm.persistent_chains, config.ebm.persistent_reinit = 1000, 1.5
  with pytest.raises(ValueError, match='persistent_reinit=1.5'):
    config_lib.validate(config)


@pytest.mark.parametrize('old,new', [('ebm.learning_rate', 'prior_optim.learning_rate'),
                                     ('ebm.b1', 'prior_optim.b1')])
def test_a_moved_config_key_fails_with_a_line_that_names_the_new_one(old, new):
  config = config_lib.base_config('moe_ebm')
  section, key = old.split('.')
  config[section][key] = 0.1
  with pytest.raises(ValueError, match=f'invalid config: {old} is now {new}: set that instead'):
    config_lib.validate(config)
