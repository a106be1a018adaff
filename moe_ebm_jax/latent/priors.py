"""Priors on the shared latent z as components: one interface, a registry that names them.

A prior is a hashable object (static under jit; its parameters live in TrainState.prior_params),
built once per run by its registered factory from the config (its own section, e.g. config.ebm).
The interface (`Prior` gives the defaults a prior without them needs):

  init(key, latent_dim) -> params                      ({} for a prior with none)
  init_state(key, latent_dim) -> state                 what the prior carries from step to
                                                       step besides parameters, not trained
                                                       ({} for most; the EBM's persistent chains)
  log_prob(params, beta) -> (z (..., D) -> (...))      log p(z) as the objectives take it (they
                                                       multiply it by beta, the KL weight)
  sample(params, key, num, latent_dim, keep_trajectory=False, state=None)
      -> (z (num, D), diagnostics: a dict, with 'trajectory' (steps, num, D) when kept and the
         prior has a chain); state: the prior's state, for priors that sample from it
  learn(params, state, keys, vae, vae_params, x, aux) -> PriorUpdate (or the same 5-tuple)
      its own update's gradient, computed inside the one jitted training step; keys: three
      PRNG keys (prior chain, expert pick, posterior chain); aux: objectives.VaeAux
  refines_posterior: bool, and
  refine_posterior(params, vae, vae_params, x, z, w, observed, key, keep_trajectory=False)
      -> (z (B, Dz), w (M, B, Dw), trajectory (steps, B, Dz) or None)
      posterior inference at generation: z ~ q(z | X_S) refined on the observed modalities
      (bool (M,)); the identity for a prior that does not refine (then refines_posterior is
      False and evaluation reports only the encoders' q)
  describe() -> str                                    where joint generation's z comes from,
                                                       for figure titles
  describe_refinement() -> str                         what refine_posterior does, likewise

train.train_step calls these and nothing else of the prior, and generation and evaluation reach
the prior only through them: neither imports the EBM module. Registered (config.model.prior):
'fixed' (family(0, I), nothing learned) and 'ebm' (the latent EBM p_a(z) = exp(f_a(z)) p0(z) /
Z(a), learned by short-run MCMC, ebm.py). A new prior is one factory (config, vae) -> prior under
`@register(name)` (examples/new_prior.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import NamedTuple
import jax
import jax.numpy as jnp

from moe_ebm_jax import registry
from moe_ebm_jax.latent import ebm as ebm_lib
from moe_ebm_jax.latent import samplers
from moe_ebm_jax.vae import aggregation
from moe_ebm_jax.vae import distributions as dists
from moe_ebm_jax.vae import networks

PRIORS: registry.Registry = registry.Registry('prior')
# Where the EBM's posterior samples come from in its update (config.model.posterior_sampler).
POSTERIOR_SAMPLERS = ('q', 'langevin')
# f_a's weight in the VAE's bound (config.ebm.energy_weight): 'beta' or 'one' (the paper's Eq. 5).
ENERGY_WEIGHTS = ('beta', 'one')


def register(name: str, **owned):
  """Decorator: registers a factory (config, vae: models.MultimodalVAE) -> prior under `name`
  (config.model.prior), with the config it owns (`config`, `validate`: registry.py). Names are
  unique."""
  return PRIORS.register(name, **owned)


def get(name: str):
  return PRIORS.lookup(name)


def build(config, vae):
  """The prior config.model.prior names, built once by its factory; it must have the interface
  (a class of one's own: subclass `Prior` for its defaults)."""
  prior = get(config.model.prior)(config, vae)
  missing = [a for a in ('init', 'init_state', 'log_prob', 'sample', 'learn', 'refines_posterior',
                         'refine_posterior', 'describe', 'describe_refinement') if not hasattr(prior, a)]
  if missing:
    raise TypeError(f'prior {config.model.prior!r} ({type(prior).__name__}) lacks {missing}: '
                    'subclass priors.Prior for the defaults.')
  return prior


class PriorUpdate(NamedTuple):
  """What `learn` returns. A step whose update is not ok keeps the old params and state."""
  grads: Any  # Like params.
  state: Any  # The prior's new state.
  metrics: dict[str, jax.Array]
  ok_loss: jax.Array  # bool (): the loss and its gradients are finite.
  ok_bounds: jax.Array  # bool (): the prior's own values within their bounds (the EBM's energies).


class Prior:
  """Defaults of the interface for a prior of one's own: no state, no posterior refinement."""
  refines_posterior = False

  def init_state(self, key, latent_dim: int):
    del key, latent_dim
    return {}

  def refine_posterior(self, params, vae, vae_params, x, z, w, observed, key, *,
                       keep_trajectory: bool = False):
    """The identity: z and w as q gave them, no trajectory."""
    del params, vae, vae_params, x, observed, key, keep_trajectory
    return z, w, None

  def describe(self) -> str:
    return f'z ~ {type(self).__name__}'

  def describe_refinement(self) -> str:
    return 'no refinement'


@dataclasses.dataclass(frozen=True)
class FixedPrior(Prior):
  """p(z) = family(0, I): MMVAE+'s Laplace, the Gaussian of MVAE, mmJSD and MoPoE."""
  family: str = 'laplace'

  def init(self, key, latent_dim: int):
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
    return PriorUpdate(params, state, {}, jnp.array(True), jnp.array(True))

  def describe(self) -> str:
    return 'z ~ p(z)'


@dataclasses.dataclass(frozen=True)
class EnergyPrior(Prior):
  """The latent EBM prior p_a(z) = exp(f_a(z)) p0(z) / Z(a) (ebm.py), p0 = `p0` (ebm.Base).

  Learned by the maximum-likelihood gradient E_post[grad f_a] - E_prior[grad f_a]: prior samples
  from the prior chain, posterior samples from the encoders' q ('q') or refined by the
  posterior chain ('langevin'). At generation the posterior chain refines q's z (post-LD).

  Prior chains start from p0 at every step (persistent_chains = 0, the paper's short-run
  chains) or continue `persistent_chains` chains kept in the prior's state (persistent
  contrastive divergence, Tieleman 2008): each step takes the next B of them in turn, restarts
  a fraction `persistent_reinit` from p0 (as Du & Mordatch 2019's replay buffer), runs the chain
  and puts them back. Generation then starts its chains from random members of the state.
  """
  energy: networks.EnergyMLP
  prior_chain: samplers.Chain
  posterior_chain: samplers.Chain
  posterior_sampler: str = 'langevin'  # One of POSTERIOR_SAMPLERS.
  posterior_latents: str = 'z'  # Move z ('z') or z and every w ('zw') in the posterior chain.
  energy_weight: str = 'beta'  # One of ENERGY_WEIGHTS.
  energy_l2: float = 0.0
  max_abs_energy: float = 1e4
  p0: ebm_lib.Base = ebm_lib.Base()  # The base density (config.ebm.base, base_scale).
  persistent_chains: int = 0  # 0: prior chains from p0 at every step.
  persistent_reinit: float = 0.05  # The fraction of persistent chains restarted from p0.
  refines_posterior = True

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

  def _run_prior_chain(self, params, key, num: int, latent_dim: int, init=None,
                       keep_trajectory: bool = False):
    """The prior chain from p0 (or from `init` (num, D)): (z (num, D), diagnostics)."""
    k0, k1 = jax.random.split(key)
    z0 = self.p0.sample(k0, (num, latent_dim)) if init is None else init
    return self.prior_chain(ebm_lib.prior_log_prob(self.energy, params, self.p0), z0, k1,
                            keep_trajectory=keep_trajectory)

  def sample(self, params, key, num: int, latent_dim: int, keep_trajectory: bool = False,
             state=None):
    """The prior chain from p0, or with persistent chains in `state` from `num` of them
    drawn at random (with replacement only when num exceeds them)."""
    init = None
    if self.persistent_chains and state:
      key, k_pick = jax.random.split(key)
      n = state['chains'].shape[0]
      init = state['chains'][jax.random.choice(k_pick, n, (num,), replace=num > n)]
    return self._run_prior_chain(params, key, num, latent_dim, init, keep_trajectory)

  def _persistent_prior(self, params, state, key, batch: int):
    """Continues the next `batch` persistent chains: (z (batch, D), diag, new state)."""
    chains, cursor = state['chains'], state['cursor']
    n = chains.shape[0]
    rows = (cursor + jnp.arange(batch)) % n
    k_restart, k_fresh, k_chain = jax.random.split(key, 3)
    restart = jax.random.bernoulli(k_restart, self.persistent_reinit, (batch, 1))
    fresh = self.p0.sample(k_fresh, (batch, chains.shape[1]))
    init = jnp.where(restart, fresh, chains[rows])
    z, diag = self._run_prior_chain(params, k_chain, batch, chains.shape[1], init)
    return z, diag, {'chains': chains.at[rows].set(z), 'cursor': (cursor + batch) % n}

  def _run_posterior_chain(self, params, vae, vae_params, x, z0, w, observed, key,
                           keep_trajectory: bool = False):
    """The posterior chain from z0 (B, Dz), private latents w (M, B, Dw) held or moved
    (posterior_latents): ({'z': (B, Dz)[, 'w': (B, M, Dw)]}, diagnostics)."""
    state = {'z': z0}
    if self.posterior_latents == 'zw':
      state['w'] = jnp.moveaxis(w, 0, 1)  # Leading batch axis for the sampler.
    log_prob = ebm_lib.posterior_log_prob(vae, vae_params, self.energy, params, x, observed, w,
                                          self.p0)
    return self.posterior_chain(log_prob, state, key, keep_trajectory=keep_trajectory)

  def refine_posterior(self, params, vae, vae_params, x, z, w, observed, key, *,
                       keep_trajectory: bool = False):
    """Posterior Langevin on log p(X_S | z, w_S) + f_a(z) + log p0(z) from q's z."""
    final, diag = self._run_posterior_chain(params, vae, vae_params, x, z, w, observed, key,
                                            keep_trajectory)
    if 'w' in final:
      w = jnp.moveaxis(final['w'], 1, 0)
    return final['z'], w, (diag['trajectory']['z'] if keep_trajectory else None)

  def learn(self, params, state, keys, vae, vae_params, x, aux):
    """Incomplete data (aux.observed (M, B)): the posterior chain starts from an observed
    expert's z and scores the observed modalities only; with posterior samples from q, each
    example's observed experts share its weight."""
    k_prior, k_pick, k_post = keys
    metrics = {}
    z_prior, prior_diag, state = self._prior_samples(params, state, k_prior,
                                                     aux.post.z_loc.shape[1], vae.latent_z)
    z_q = aux.latents.z[:, 0]  # (M, B, Dz): the first of K samples per source.
    post = self.posterior_chain
    weights, incomplete = None, getattr(aux, 'observed', None)  # VaeAux.observed, or absent.
    if self.posterior_sampler == 'langevin':
      if incomplete is None:
        z0 = ebm_lib.pick_expert(k_pick, z_q)
        observed = jnp.ones((z_q.shape[0],), bool)
      else:
        z0 = ebm_lib.pick_observed_expert(k_pick, z_q, incomplete)
        observed = incomplete
      post_state, post_diag = self._run_posterior_chain(
          params, vae, jax.lax.stop_gradient(vae_params), x, z0, aux.latents.w[:, 0], observed,
          k_post)
      z_post = post_state['z']
      if 'accept_rate' in post_diag and post.num_steps:  # Metropolis-adjusted samplers.
        metrics['posterior_accept_rate'] = post_diag['accept_rate'].mean()
      metrics['posterior_grad_norm'] = post_diag['grad_norm'][-1] if post.num_steps else 0.
      metrics['posterior_log_prob'] = post_diag['log_prob'][-1] if post.num_steps else 0.
    else:
      z_post = z_q  # Every expert's sample: the mixture's expectation without picking.
      if incomplete is not None:
        weights = aggregation.observed_weights(incomplete)
    return self._contrast(params, state, z_prior, prior_diag, z_post, metrics, weights)

  def learn_from_samples(self, params, state, key, z_post) -> PriorUpdate:
    """The same update from given posterior samples z_post (..., B, D), e.g. a frozen VAE's
    latents (a post-hoc EBM, posthoc.py): B prior samples (the prior chain, from p0 or the
    persistent chains in `state`) against them."""
    z_prior, prior_diag, state = self._prior_samples(params, state, key, z_post.shape[-2],
                                                     z_post.shape[-1])
    return self._contrast(params, state, z_prior, prior_diag, z_post, {})

  def _prior_samples(self, params, state, key, batch: int, latent_dim: int):
    """(z (batch, D), diagnostics, new state): persistent chains continued, or fresh ones."""
    if self.persistent_chains:
      return self._persistent_prior(params, state, key, batch)
    return (*self.sample(params, key, batch, latent_dim), state)

  def _contrast(self, params, state, z_prior, prior_diag, z_post, metrics,
                posterior_weights=None) -> PriorUpdate:
    """The maximum-likelihood gradient of f_a from prior and posterior samples."""
    (loss, ebm_metrics), grads = jax.value_and_grad(
        lambda p: ebm_lib.ebm_loss(self.energy, p, z_prior, z_post, self.energy_l2,
                                   posterior_weights),
        has_aux=True)(params)
    metrics.update(ebm_metrics)
    if self.prior_chain.num_steps:
      metrics['prior_grad_norm'] = prior_diag['grad_norm'][-1]
      if 'accept_rate' in prior_diag:
        metrics['prior_accept_rate'] = prior_diag['accept_rate'].mean()
    ok_loss = jnp.isfinite(loss) & all_finite(grads)
    ok_energy = ((jnp.abs(ebm_metrics['energy_prior']) < self.max_abs_energy) &
                 (jnp.abs(ebm_metrics['energy_posterior']) < self.max_abs_energy))
    return PriorUpdate(grads, state, metrics, ok_loss, ok_energy)

  def describe(self) -> str:
    if not self.prior_chain.num_steps:
      return 'z ~ p0(z), no prior Langevin'
    start = ' from persistent chains' if self.persistent_chains else ''
    return f'z from {self.prior_chain.num_steps}-step prior Langevin{start}'

  def describe_refinement(self) -> str:
    return f'{self.posterior_chain.num_steps}-step posterior Langevin'


def all_finite(tree) -> jax.Array:
  """Whether every leaf of `tree` is finite everywhere: bool () (True for an empty tree)."""
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


@register('fixed')
def _fixed(config, vae):
  del config
  return FixedPrior(vae.distribution)


def _ebm_config() -> dict:
  """config.ebm: the EBM prior and its chains. The paper gives no values: these start from Pang
  et al. 2020 (docs/method.md, section 1)."""
  return {'ebm': {
      'hidden': (200, 200),
      'activation': 'gelu',
      'param_init': 'pytorch',  # As model.param_init: Pang et al.'s EBM is PyTorch nn.Linear.
      'prior_steps': 60,
      'prior_step_size': 0.4,
      'posterior_steps': 20,
      'posterior_step_size': 0.1,
      'noise_scale': 1.0,  # Multiplies the Langevin noise (1 = exact Langevin).
      # The MCMC sampler of both chains (samplers.py): 'langevin' (unadjusted, the paper's),
      # 'mala' (Metropolis-adjusted: exact at any step size), or any registered one.
      'sampler': 'langevin',
      'posterior_latents': 'z',  # Paper silent: move only the shared z ('z') or also w ('zw').
      # Unrolled chains run faster on XLA:CPU than a rolled lax.scan; compiles take longer
      # (docs/speed.md).
      'unroll_chains': True,
      # Weight of energy_l2 * (mean f^2 at prior + at posterior samples) in the EBM loss; 0 is
      # the paper's loss (docs/results.md: why a run may need it).
      'energy_l2': 0.0,
      # How f_a enters the VAE's bound. 'beta': with the prior terms, times beta; 'one': the
      # paper's Eq. 5, the ELBO plus f_a unweighted (ENERGY_WEIGHTS).
      'energy_weight': 'beta',
      # The base density p0 on z: 'laplace' (the paper: MMVAE+'s prior) or 'gaussian' (Pang et
      # al.'s N(0, I)); exp(f_a) Laplace can be improper, exp(f_a) N(0, I) cannot
      # (docs/fidelity.md).
      'base': 'laplace',
      'base_scale': 1.0,  # p0 = base(0, base_scale^2 I); 1 is the paper's and Pang et al.'s.
      # Prior chains: 0 starts them from p0 at every step (the paper's short-run chains); N > 0
      # keeps N persistent chains, restarting a fraction persistent_reinit from p0 (EnergyPrior).
      'persistent_chains': 0,
      'persistent_reinit': 0.05,
      'max_abs_energy': 1e4,  # An |energy| above this counts as an explosion (step skipped).
  }}


def _validate_ebm(config) -> None:
  """The EBM's section, and the posterior sampler of its update."""
  e, check = config.ebm, registry.check
  check(config.model.posterior_sampler in POSTERIOR_SAMPLERS,
        f'model.posterior_sampler={config.model.posterior_sampler!r}, expected one of '
        f'{POSTERIOR_SAMPLERS}')
  check(config.model.prior == 'ebm' or config.model.posterior_sampler == 'q',
        'model.posterior_sampler=langevin needs model.prior=ebm')
  check(e.sampler in samplers.SAMPLERS,
        f'ebm.sampler={e.sampler!r} is not one of {sorted(samplers.SAMPLERS)}')
  samplers.validate(e.sampler, 'ebm', e)
  check(e.posterior_latents in ebm_lib.POSTERIOR_LATENTS,
        f'ebm.posterior_latents={e.posterior_latents!r}, expected one of '
        f'{ebm_lib.POSTERIOR_LATENTS}')
  for key in ('prior_steps', 'posterior_steps'):
    check(e[key] >= 0, f'ebm.{key}={e[key]} < 0')
  check(isinstance(e.persistent_chains, int) and (
      e.persistent_chains == 0 or e.persistent_chains >= config.batch_size),
        f'ebm.persistent_chains={e.persistent_chains!r}: 0, or at least the batch size '
        f'({config.batch_size}): each step continues a batch of distinct chains')
  check(0 <= e.persistent_reinit <= 1,
        f'ebm.persistent_reinit={e.persistent_reinit!r}, expected a fraction in [0, 1]')
  check(e.energy_l2 >= 0, f'ebm.energy_l2={e.energy_l2} < 0')
  check(e.base in ebm_lib.BASES, f'ebm.base={e.base!r}, expected one of {ebm_lib.BASES}')
  check(e.base_scale > 0, f'ebm.base_scale={e.base_scale!r} must be > 0')
  check(e.energy_weight in ENERGY_WEIGHTS,
        f'ebm.energy_weight={e.energy_weight!r}, expected one of {ENERGY_WEIGHTS}')
  check(e.param_init in networks.INITS,
        f'ebm.param_init={e.param_init!r}, expected one of {networks.INITS}')


@register('ebm', config=_ebm_config, validate=_validate_ebm)
def _energy(config, vae):
  """The EBM from its own section, config.ebm (and config.model.posterior_sampler)."""
  del vae
  e = config.ebm
  unroll = True if e.unroll_chains else 1
  chain = lambda steps, size: samplers.Chain(steps, size, e.noise_scale, e.sampler, unroll)
  energy = networks.EnergyMLP(hidden=tuple(e.hidden), activation=e.activation,
                              param_init=e.param_init)
  return EnergyPrior(energy, chain(e.prior_steps, e.prior_step_size),
                     chain(e.posterior_steps, e.posterior_step_size),
                     config.model.posterior_sampler, e.posterior_latents, e.energy_weight,
                     e.energy_l2, e.max_abs_energy, ebm_lib.Base(e.base, e.base_scale),
                     e.persistent_chains, e.persistent_reinit)
