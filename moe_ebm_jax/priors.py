"""Priors on the shared latent z as components: one interface, a registry that names them.

A prior is a hashable object (static under jit; its parameters live in TrainState.ebm_params)
with

  init(key, latent_dim) -> params                      ({} for a prior with none)
  init_state(key, latent_dim) -> state                 what the prior carries from step to
                                                       step besides parameters, not trained
                                                       ({} for a prior with none; the EBM's
                                                       persistent chains)
  log_prob(params, beta) -> (z (..., D) -> (...))      log p(z) as the objectives take it (they
                                                       multiply it by beta, the KL weight)
  sample(params, key, num, latent_dim, keep_trajectory=False, state=None)
      -> (z (num, D), diagnostics: a dict, with 'trajectory' (steps, num, D) when kept and the
         prior has a chain); state: the prior's state, for priors that sample from it
  learn(params, state, keys, vae, vae_params, x, aux)
      -> (grads like params, new state, metrics, ok_loss, ok_energy)
         its own update's gradient, computed inside the one jitted training step; keys: three
         PRNG keys (prior chain, expert pick, posterior chain); aux: the objective's
         objectives.VaeAux; ok_*: finite loss and gradients, energies within bounds (a step
         that is not ok keeps the old params and state)

train.train_step calls these and nothing else of the prior: it has no branch on its kind.
Registered (config.model.prior): 'fixed' (family(0, I), nothing learned) and 'ebm' (the latent
EBM p_a(z) = exp(f_a(z)) p0(z) / Z(a), learned by short-run MCMC, ebm.py). A new prior is one
factory Model -> prior under `@register(name)` (examples/new_prior.py).
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp

from moe_ebm_jax import distributions as dists
from moe_ebm_jax import ebm as ebm_lib
from moe_ebm_jax import networks
from moe_ebm_jax import registry
from moe_ebm_jax import samplers

PRIORS: registry.Registry = registry.Registry('prior')


def register(name: str):
  """Decorator: registers a factory model_state.Model -> prior under `name`
  (config.model.prior). Names are unique."""
  return PRIORS.register(name)


def get(name: str):
  return PRIORS.lookup(name)


@dataclasses.dataclass(frozen=True)
class FixedPrior:
  """p(z) = family(0, I): MMVAE+'s Laplace, the Gaussian of MVAE, mmJSD and MoPoE."""
  family: str = 'laplace'

  def init(self, key, latent_dim: int):
    del key, latent_dim
    return {}

  def init_state(self, key, latent_dim: int):
    del key, latent_dim
    return {}

  def log_prob(self, params, beta):
    del params, beta
    return lambda z: dists.log_prob(self.family, z, 0.0, 1.0)

  def sample(self, params, key, num: int, latent_dim: int, keep_trajectory: bool = False,
             state=None):
    del params, keep_trajectory, state
    return dists.standard_sample(self.family, key, (num, latent_dim)), {}

  def learn(self, params, state, keys, vae, vae_params, x, aux):
    del keys, vae, vae_params, x, aux
    return params, state, {}, jnp.array(True), jnp.array(True)


@dataclasses.dataclass(frozen=True)
class EnergyPrior:
  """The latent EBM prior p_a(z) = exp(f_a(z)) p0(z) / Z(a) (ebm.py), p0 = `p0` (ebm.Base).

  Learned by the maximum-likelihood gradient E_post[grad f_a] - E_prior[grad f_a]: prior samples
  from the prior chain, posterior samples from the encoders' q ('q') or refined by the
  posterior chain ('langevin').

  Prior chains start from p0 at every step (persistent_chains = 0, the paper's short-run
  chains) or continue `persistent_chains` chains kept in the prior's state (persistent
  contrastive divergence, Tieleman 2008): each step takes the next B of them in turn, restarts
  a fraction `persistent_reinit` from p0 (as Du & Mordatch 2019's replay buffer), runs the chain
  and puts them back. A short chain from p0 need not reach the modes of exp(f_a) p0; chains
  that go on across steps do (docs/results.md). Generation then starts its chains from random
  members of the state.
  """
  energy: networks.EnergyMLP
  prior_chain: samplers.Chain
  posterior_chain: samplers.Chain
  posterior_sampler: str = 'langevin'  # 'q' or 'langevin'.
  posterior_latents: str = 'z'  # Move z ('z') or z and every w ('zw') in the posterior chain.
  energy_weight: str = 'beta'  # f_a's weight in the bound: 'beta' or 'one' (the paper's Eq. 5).
  energy_l2: float = 0.0
  max_abs_energy: float = 1e4
  p0: ebm_lib.Base = ebm_lib.Base()  # The base density (config.ebm.base, base_scale).
  persistent_chains: int = 0  # 0: prior chains from p0 at every step.
  persistent_reinit: float = 0.05  # The fraction of persistent chains restarted from p0.

  def init(self, key, latent_dim: int):
    return self.energy.init(key, jnp.zeros((1, latent_dim)))

  def init_state(self, key, latent_dim: int):
    """{} or, with persistent chains, {'chains': (N, D) drawn from p0, 'cursor': int32 ()
    the first chain of the next step}."""
    if not self.persistent_chains:
      return {}
    return {'chains': self.p0.sample(key, (self.persistent_chains, latent_dim)),
            'cursor': jnp.zeros((), jnp.int32)}

  def log_prob(self, params, beta):
    """f_a(z) + log p0(z); with energy_weight 'one' f_a enters divided by beta, so that its
    net weight in the bound is 1."""
    if self.energy_weight == 'beta':
      return ebm_lib.prior_log_prob(self.energy, params, self.p0)
    return lambda z: self.energy.apply(params, z) / beta + self.p0.log_prob(z)

  def sample(self, params, key, num: int, latent_dim: int, keep_trajectory: bool = False,
             state=None):
    """The prior chain from p0, or with persistent chains in `state` from `num` of them
    drawn at random (with replacement only when num exceeds them)."""
    c = self.prior_chain
    init = None
    if self.persistent_chains and state:
      key, k_pick = jax.random.split(key)
      n = state['chains'].shape[0]
      init = state['chains'][jax.random.choice(k_pick, n, (num,), replace=num > n)]
    return ebm_lib.sample_prior(self.energy, params, key, num, latent_dim,
                                num_steps=c.num_steps, step_size=c.step_size,
                                noise_scale=c.noise_scale, keep_trajectory=keep_trajectory,
                                unroll=c.unroll, sampler=c.sampler, base=self.p0, init=init)

  def _persistent_prior(self, params, state, key, batch: int):
    """Continues the next `batch` persistent chains: (z (batch, D), diag, new state)."""
    chains, cursor = state['chains'], state['cursor']
    n = chains.shape[0]
    rows = (cursor + jnp.arange(batch)) % n
    k_restart, k_fresh, k_chain = jax.random.split(key, 3)
    restart = jax.random.bernoulli(k_restart, self.persistent_reinit, (batch, 1))
    fresh = self.p0.sample(k_fresh, (batch, chains.shape[1]))
    init = jnp.where(restart, fresh, chains[rows])
    c = self.prior_chain
    z, diag = ebm_lib.sample_prior(self.energy, params, k_chain, batch, chains.shape[1],
                                   num_steps=c.num_steps, step_size=c.step_size,
                                   noise_scale=c.noise_scale, unroll=c.unroll,
                                   sampler=c.sampler, base=self.p0, init=init)
    return z, diag, {'chains': chains.at[rows].set(z), 'cursor': (cursor + batch) % n}

  def learn(self, params, state, keys, vae, vae_params, x, aux):
    k_prior, k_pick, k_post = keys
    metrics = {}
    batch = aux.post.z_loc.shape[1]
    if self.persistent_chains:
      z_prior, prior_diag, state = self._persistent_prior(params, state, k_prior, batch)
    else:
      z_prior, prior_diag = self.sample(params, k_prior, batch, vae.latent_z)
    z_q = aux.latents.z[:, 0]  # (M, B, Dz): the first of K samples per source.
    post = self.posterior_chain
    if self.posterior_sampler == 'langevin':
      z0 = ebm_lib.pick_expert(k_pick, z_q)
      post_state, post_diag = ebm_lib.sample_posterior(
          vae, jax.lax.stop_gradient(vae_params), self.energy, params, x, z0,
          aux.latents.w[:, 0], k_post, num_steps=post.num_steps, step_size=post.step_size,
          noise_scale=post.noise_scale, latents=self.posterior_latents, unroll=post.unroll,
          sampler=post.sampler, base=self.p0)
      z_post = post_state['z']
      if 'accept_rate' in post_diag and post.num_steps:  # Metropolis-adjusted samplers.
        metrics['posterior_accept_rate'] = post_diag['accept_rate'].mean()
      metrics['posterior_grad_norm'] = post_diag['grad_norm'][-1] if post.num_steps else 0.
      metrics['posterior_log_prob'] = post_diag['log_prob'][-1] if post.num_steps else 0.
    else:
      z_post = z_q  # Every expert's sample: the mixture's expectation without picking.
    (loss, ebm_metrics), grads = jax.value_and_grad(
        lambda p: ebm_lib.ebm_loss(self.energy, p, z_prior, z_post, self.energy_l2),
        has_aux=True)(params)
    metrics.update(ebm_metrics)
    if self.prior_chain.num_steps:
      metrics['prior_grad_norm'] = prior_diag['grad_norm'][-1]
      if 'accept_rate' in prior_diag:
        metrics['prior_accept_rate'] = prior_diag['accept_rate'].mean()
    leaves = jax.tree.leaves(grads)
    ok_loss = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))
    ok_energy = ((jnp.abs(ebm_metrics['energy_prior']) < self.max_abs_energy) &
                 (jnp.abs(ebm_metrics['energy_posterior']) < self.max_abs_energy))
    return grads, state, metrics, ok_loss, ok_energy


@register('fixed')
def _fixed(model):
  return FixedPrior(model.vae.distribution)


@register('ebm')
def _energy(model):
  chain = lambda steps, size: samplers.Chain(steps, size, model.noise_scale, model.sampler,
                                             model.langevin_unroll)
  return EnergyPrior(model.energy, chain(model.prior_steps, model.prior_step_size),
                     chain(model.posterior_steps, model.posterior_step_size),
                     model.posterior_sampler, model.posterior_latents, model.energy_weight,
                     model.energy_l2, model.max_abs_energy, model.p0,
                     model.persistent_chains, model.persistent_reinit)
