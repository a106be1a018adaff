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

from moe_ebm_jax import optimizers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.latent import priors
from moe_ebm_jax.vae import models
from moe_ebm_jax.vae import objectives

Params = Any

# Keys that must match to resume a workdir (others, e.g. num_train_steps, may change).
COMPATIBLE_KEYS = ('model.name', 'model.widths', 'model.latent_w', 'model.latent_z',
                   'model.prior', 'ebm.hidden', 'ebm.activation', 'data.name',
                   'data.num_modalities', 'model.mlp_hidden',
                   'data.seed', 'data.backgrounds', 'optim.amsgrad', 'optim.implementation',
                   'optim.grad_clip_norm', 'model.posterior_scale_multiplier',
                   'ebm.persistent_chains', 'data.image_network', 'data.missing_ratio',
                   'data.missing_by_class', 'data.missing_seed', 'data.incomplete_examples')
# Compatible keys added after runs existed, with the value those runs had: they stay resumable.
ADDED_KEY_DEFAULTS = {'ebm.persistent_chains': 0, 'data.image_network': 'resnet',
                      'data.missing_ratio': 0.0, 'data.missing_by_class': None,
                      'data.missing_seed': 0, 'data.incomplete_examples': 'masked'}


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. A pytree of arrays (checkpointed whole)."""
  step: jax.Array  # int32 ()
  vae_params: Params
  prior_params: Params  # The prior's (priors.py) trained parameters; {} for a fixed prior.
  vae_opt_state: Any
  prior_opt_state: Any
  prior_state: Any  # The prior's untrained state ({} for most; the EBM's persistent chains).
  key: jax.Array  # uint32 (2,) raw PRNG key.
  bad_steps: jax.Array  # int32 (): consecutive skipped steps.
  skipped_steps: jax.Array  # int32 (): skipped steps in total.
  last_bad_reason: jax.Array  # int32 (): train.BAD_* bits of the last skipped step.

  # Checkpoints written before the rename hold these fields under their old names
  # (checkpointing.Checkpointer.restore reads them).
  RENAMED_FIELDS = {'prior_params': 'ebm_params', 'prior_opt_state': 'ebm_opt_state'}
  # The old names, read-only: scripts and the golden record read them.
  ebm_params = property(lambda self: self.prior_params)
  ebm_opt_state = property(lambda self: self.prior_opt_state)


@dataclasses.dataclass(frozen=True)
class Model:
  """The static half of a model: networks, the prior and the loss's settings; hashable, so jit
  treats it as static. The prior owns its settings (priors.py)."""
  vae: models.MultimodalVAE
  prior: Any  # priors.py: built once by its registered factory (config.model.prior).
  objective: str  # A name in objectives.OBJECTIVES.
  beta: float
  num_samples: int
  estimator: str
  beta_warmup_steps: int = 0  # beta grows linearly from beta / N to beta over the first N steps.

  @property
  def aggregation(self) -> str:
    """How q(z | X_S) combines the unimodal posteriors (aggregation.py)."""
    return objectives.get(self.objective).aggregation

  def beta_at(self, step: jax.Array) -> jax.Array | float:
    """The KL weight of training step `step` (0-based): beta * min(1, (step + 1) / N)."""
    if not self.beta_warmup_steps:
      return self.beta
    return self.beta * jnp.minimum(1.0, (step + 1) / self.beta_warmup_steps)

  def log_prior_z(self, prior_params: Params, beta: jax.Array | float):
    """log p(z) as the objectives take it: z (..., D) -> (...). They multiply it by `beta` (the
    KL weight of this step), so with energy_weight 'one' f_a enters divided by beta: its net
    weight is then 1, the paper's Eq. 5."""
    return self.prior.log_prob(prior_params, beta)


def make_model(config: ml_collections.ConfigDict) -> Model:
  vae = models.make_vae(config, datasets.get(config.data).modalities)
  return Model(
      vae=vae, prior=priors.build(config, vae), objective=config.model.objective,
      beta=config.model.beta, beta_warmup_steps=config.model.beta_warmup_steps,
      num_samples=config.model.num_samples, estimator=config.model.estimator)


def init_state(model: Model, vae_tx, prior_tx, key: jax.Array) -> TrainState:
  k_vae, k_prior, k_train = jax.random.split(key, 3)
  vae_params = model.vae.init(k_vae)
  prior_params = model.prior.init(k_prior, model.vae.latent_z)  # {} for a prior without params.
  # Its own key, folded from the prior's so that the other keys are as before it had state.
  prior_state = model.prior.init_state(jax.random.fold_in(k_prior, 1), model.vae.latent_z)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, vae_params=vae_params, prior_params=prior_params,
                    vae_opt_state=vae_tx.init(vae_params),
                    prior_opt_state=prior_tx.init(prior_params), prior_state=prior_state,
                    key=k_train, bad_steps=zero, skipped_steps=zero, last_bad_reason=zero)


def abstract_state(config: ml_collections.ConfigDict, model: Model, mesh) -> TrainState:
  """The TrainState's shapes and dtypes, replicated over `mesh`: what a checkpoint restores
  into. Nothing is computed."""
  vae_tx, prior_tx = optimizers.make_optimizers(config)
  shapes = jax.eval_shape(functools.partial(init_state, model, vae_tx, prior_tx),
                          jax.random.PRNGKey(0))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      shapes)
