"""The model as training sees it: `Model`, its static half (networks and settings), and
`TrainState`, everything that changes during training, with their construction from a config.

Training (train.py), evaluation (evaluation.py), generation (generation.py) and the scripts depend
on this module, not on one another.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from moe_ebm_jax import datasets
from moe_ebm_jax import ebm as ebm_lib
from moe_ebm_jax import models
from moe_ebm_jax import networks
from moe_ebm_jax import objectives
from moe_ebm_jax import optimizers
from moe_ebm_jax import priors

Params = Any

# Keys that must match to resume a workdir (others, e.g. num_train_steps, may change).
COMPATIBLE_KEYS = ('model.name', 'model.widths', 'model.latent_w', 'model.latent_z',
                   'model.prior', 'ebm.hidden', 'ebm.activation', 'data.name',
                   'data.num_modalities', 'model.mlp_hidden',
                   'data.seed', 'data.backgrounds', 'optim.amsgrad', 'optim.implementation',
                   'optim.grad_clip_norm', 'model.posterior_scale_multiplier',
                   'ebm.persistent_chains', 'data.image_network')
# Compatible keys added after runs existed, with the value those runs had: they stay resumable.
ADDED_KEY_DEFAULTS = {'ebm.persistent_chains': 0, 'data.image_network': 'resnet'}


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. A pytree of arrays (checkpointed whole)."""
  step: jax.Array  # int32 ()
  vae_params: Params
  ebm_params: Params  # {} for models without an EBM prior.
  vae_opt_state: Any
  ebm_opt_state: Any
  prior_state: Any  # The prior's untrained state ({} for most; the EBM's persistent chains).
  key: jax.Array  # uint32 (2,) raw PRNG key.
  bad_steps: jax.Array  # int32 (): consecutive skipped steps.
  skipped_steps: jax.Array  # int32 (): skipped steps in total.
  last_bad_reason: jax.Array  # int32 (): train.BAD_* bits of the last skipped step.


@dataclasses.dataclass(frozen=True)
class Model:
  """The static half of a model: networks and settings; hashable, so jit treats it as static."""
  vae: models.MultimodalVAE
  energy: networks.EnergyMLP | None
  objective: str  # A name in objectives.OBJECTIVES.
  beta: float
  num_samples: int
  estimator: str
  posterior_sampler: str  # 'q' or 'langevin'.
  prior_steps: int
  prior_step_size: float
  posterior_steps: int
  posterior_step_size: float
  noise_scale: float
  posterior_latents: str
  max_abs_energy: float
  energy_l2: float = 0.0  # Weight of the EBM's energy-magnitude penalty (config.ebm.energy_l2).
  langevin_unroll: int | bool = 1  # lax.scan's unroll for the chains (config.ebm.unroll_chains).
  beta_warmup_steps: int = 0  # beta grows linearly from beta / N to beta over the first N steps.
  energy_weight: str = 'beta'  # f_a's weight in the VAE's bound (config.ebm.energy_weight).
  sampler: str = 'langevin'  # The chains' MCMC sampler (samplers.py; config.ebm.sampler).
  prior_kind: str = 'fixed'  # The prior on z (priors.py; config.model.prior).
  p0: ebm_lib.Base = ebm_lib.Base()  # The EBM's base density (config.ebm.base, base_scale).
  persistent_chains: int = 0  # Persistent prior chains (config.ebm.persistent_chains).
  persistent_reinit: float = 0.05  # Their restart fraction (config.ebm.persistent_reinit).

  @property
  def has_ebm(self) -> bool:
    return self.energy is not None

  @property
  def prior(self):
    """The prior on z (priors.py): log density, sampler and its own update."""
    return priors.get(self.prior_kind)(self)

  @property
  def aggregation(self) -> str:
    """How q(z | X_S) combines the unimodal posteriors (aggregation.py)."""
    return objectives.get(self.objective).aggregation

  def beta_at(self, step: jax.Array) -> jax.Array | float:
    """The KL weight of training step `step` (0-based): beta * min(1, (step + 1) / N)."""
    if not self.beta_warmup_steps:
      return self.beta
    return self.beta * jnp.minimum(1.0, (step + 1) / self.beta_warmup_steps)

  def log_prior_z(self, ebm_params: Params, beta: jax.Array | float):
    """log p(z) as the objectives take it: z (..., D) -> (...). They multiply it by `beta` (the
    KL weight of this step), so with energy_weight 'one' f_a enters divided by beta: its net
    weight is then 1, the paper's Eq. 5."""
    return self.prior.log_prob(ebm_params, beta)


def make_model(config: ml_collections.ConfigDict) -> Model:
  return Model(
      vae=models.make_vae(config, datasets.get(config.data).modalities),
      energy=models.make_energy(config) if config.model.prior == 'ebm' else None,
      objective=config.model.objective, beta=config.model.beta,
      beta_warmup_steps=config.model.beta_warmup_steps, num_samples=config.model.num_samples,
      estimator=config.model.estimator, posterior_sampler=config.model.posterior_sampler,
      prior_steps=config.ebm.prior_steps, prior_step_size=config.ebm.prior_step_size,
      posterior_steps=config.ebm.posterior_steps,
      posterior_step_size=config.ebm.posterior_step_size, noise_scale=config.ebm.noise_scale,
      posterior_latents=config.ebm.posterior_latents, max_abs_energy=config.ebm.max_abs_energy,
      energy_l2=config.ebm.energy_l2, energy_weight=config.ebm.energy_weight,
      langevin_unroll=True if config.ebm.unroll_chains else 1, sampler=config.ebm.sampler,
      prior_kind=config.model.prior, p0=ebm_lib.Base(config.ebm.base, config.ebm.base_scale),
      persistent_chains=config.ebm.persistent_chains,
      persistent_reinit=config.ebm.persistent_reinit)


def make_optimizers(config: ml_collections.ConfigDict):
  """(VAE optimiser, EBM optimiser): see optimizers.make_optimizers."""
  return optimizers.make_optimizers(config)


def init_state(model: Model, vae_tx, ebm_tx, key: jax.Array) -> TrainState:
  k_vae, k_ebm, k_train = jax.random.split(key, 3)
  vae_params = model.vae.init(k_vae)
  ebm_params = model.prior.init(k_ebm, model.vae.latent_z)  # {} for a prior without params.
  # Its own key, folded from the EBM's so that the other keys are as before the prior had state.
  prior_state = model.prior.init_state(jax.random.fold_in(k_ebm, 1), model.vae.latent_z)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, vae_params=vae_params, ebm_params=ebm_params,
                    vae_opt_state=vae_tx.init(vae_params), ebm_opt_state=ebm_tx.init(ebm_params),
                    prior_state=prior_state, key=k_train, bad_steps=zero, skipped_steps=zero, last_bad_reason=zero)


def abstract_state(config: ml_collections.ConfigDict, model: Model, mesh) -> TrainState:
  """The TrainState's shapes and dtypes, replicated over `mesh`: what a checkpoint restores
  into. Nothing is computed."""
  vae_tx, ebm_tx = make_optimizers(config)
  shapes = jax.eval_shape(functools.partial(init_state, model, vae_tx, ebm_tx),
                          jax.random.PRNGKey(0))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      shapes)
