"""Generation from a trained model: joint samples and conditional (cross) generation.

Pure functions of (state, inputs, key) with the static `model` (model_state.Model) closed over by
partial + jit. Used by the training loop's sample grids and by evaluation.py.

- Joint: z from the prior (the EBM models: the prior Langevin chain), every w_m ~ p(w), decode.
- Conditional on a subset S: z ~ q(z | X_S) as the model aggregates its experts (aggregation.py);
  modalities in S keep their own posterior w, the others draw w ~ p(w); with `post_ld` z is
  refined first by the prior's posterior inference (priors.py: the EBM's posterior Langevin on
  log p(X_S | z, w_S) + f_a(z) + log p0(z)).

`LdMode` names the three ways a conditional number is reported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_ebm_jax.vae import aggregation
from moe_ebm_jax.vae import distributions as dists

import enum


class LdMode(enum.Enum):
  """How a conditional number's z was drawn: the encoders' q of a model whose prior does not
  refine (Q), or, for one that does (the EBM), q's z before (PRE_LD) or after (POST_LD) the
  prior's posterior refinement. `.value` is the tag in metrics.json; `.label` the report's."""
  Q = 'q'
  PRE_LD = 'pre_ld'
  POST_LD = 'post_ld'

  @property
  def post_ld(self) -> bool:
    return self is LdMode.POST_LD

  @property
  def label(self) -> str:
    return {'q': '', 'pre_ld': ' pre-LD', 'post_ld': ' post-LD'}[self.value]

  @classmethod
  def of(cls, prior) -> tuple['LdMode', ...]:
    """The modes a model with `prior` reports: (Q,) or (PRE_LD, POST_LD)."""
    return (cls.PRE_LD, cls.POST_LD) if prior.refines_posterior else (cls.Q,)

  @classmethod
  def present(cls, metrics) -> list['LdMode']:
    """The modes a metrics dict (keyed by tag) holds, in their order."""
    return [mode for mode in cls if mode.value in metrics]


def sample_prior_z(state, key: jax.Array, num_samples: int, *, model,
                   keep_trajectory: bool = False):
  """z (N, Dz) from the model's prior (priors.py; the EBM's: its prior chain, from p0 or from
  its persistent chains), and the prior chain's trajectory (or None)."""
  z, diag = model.prior.sample(state.prior_params, key, num_samples, model.vae.latent_z,
                               keep_trajectory=keep_trajectory, state=state.prior_state)
  return z, (diag.get('trajectory') if keep_trajectory else None)


def decode_shared(model, vae_params, w: jax.Array, z: jax.Array, clip: bool = True):
  """Decodes every modality from its w (M, N, Dw) and the shared z (N, Dz): the likelihoods'
  means as data, {name: (N, *shape)} (class probabilities (N, K) for a categorical modality);
  image modalities clipped to the pixel range [0, 1] unless `clip` is False."""
  vae = model.vae
  m = vae.num_modalities
  latents = jnp.concatenate([w, jnp.broadcast_to(z[None], (m,) + z.shape)], axis=-1)
  means = vae.means(vae.decode(vae_params, latents))
  return {spec.name: jnp.clip(mean, 0.0, 1.0) if clip and spec.kind == 'image' else mean
          for spec, mean in zip(vae.modalities, means)}


def stack_images(decodes, names) -> jax.Array:
  """{name: (N, H, W, C)} -> (N, M, H, W, C) in the order of `names` (image modalities)."""
  return jnp.stack([decodes[n] for n in names], axis=1)


def joint_generate(state, key: jax.Array, *, model, num_samples: int,
                   keep_trajectory: bool = False, clip: bool = True):
  """Joint samples {name: (N, *shape)} (images in [0, 1] with `clip`), and the prior chain's
  trajectory or None."""
  vae = model.vae
  k_prior, k_w = jax.random.split(key)
  z, trajectory = sample_prior_z(state, k_prior, num_samples, model=model,
                                 keep_trajectory=keep_trajectory)
  w = vae.sample_prior(k_w, (vae.num_modalities, num_samples, vae.latent_w))
  return decode_shared(model, state.vae_params, w, z, clip), trajectory


def conditional_generate(state, x, subset: jax.Array, key: jax.Array, *, model,
                         post_ld: bool, keep_trajectory: bool = False, clip: bool = True):
  """Decodes every modality given the modalities in `subset`.

  Args:
    x: the batch's modalities {name: (B, *shape)} (or stacked, models.py); only those in
      `subset` are read.
    subset: bool (M,), the observed modalities (at least one).
    post_ld: refine z by the prior's posterior inference on the observed modalities
      (prior.refine_posterior; the identity for a prior that does not refine).

    clip: clip the decodes to [0, 1] (False: the likelihood's raw means).

  Returns:
    (decodes {name: (B, *shape)} as decode_shared, z (B, Dz), trajectory (steps, B, Dz) or
    None).
  """
  vae = model.vae
  k_z, k_w, k_prior_w, k_ld = jax.random.split(key, 4)
  post = vae.encode(state.vae_params, x)  # (M, B, .)
  z = aggregation.sample(model.aggregation, post.z_loc, post.z_scale, subset, k_z,
                         vae.distribution)
  w_q = dists.sample(vae.distribution, k_w, post.w_loc, post.w_scale)
  trajectory = None
  if post_ld:
    z, w_q, trajectory = model.prior.refine_posterior(
        state.prior_params, vae, state.vae_params, x, z, w_q, subset, k_ld,
        keep_trajectory=keep_trajectory)
  w = jnp.where(subset[:, None, None], w_q, vae.sample_prior(k_prior_w, w_q.shape))
  return decode_shared(model, state.vae_params, w, z, clip), z, trajectory


def sample_grids(state, x, key: jax.Array, *, model, num_samples: int):
  """Joint samples {name: (N, *shape)} and cross generation from each source, a list over
  sources of {name: (N, *shape)}, of the first N examples of `x` (pre-LD)."""
  m = model.vae.num_modalities
  k_joint, k_cross = jax.random.split(key)
  joint, _ = joint_generate(state, k_joint, model=model, num_samples=num_samples)
  first = jax.tree.map(lambda a: a[:num_samples], x)
  cross = [conditional_generate(state, first, jnp.arange(m) == src,
                                jax.random.fold_in(k_cross, src), model=model, post_ld=False)[0]
           for src in range(m)]
  return {'joint': joint, 'cross': cross}
