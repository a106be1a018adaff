"""log p(X) of a trained multimodal model by importance sampling, apart from the objectives.

The generative model every model here shares: z ~ p(z) (the fixed prior or the EBM prior,
normalised), w_m ~ p(w) = family(0, I) for every modality m, x_m ~ p(x_m | w_m, z). Its marginal
likelihood, for any proposal r(z, w | X) that covers the posterior, is

  log p(X) = log E_r[ p(z) prod_m p(w_m) p(x_m | w_m, z) / r(z, w | X) ]

and the log of the mean of K importance weights is a stochastic lower bound that tightens as K
grows (Burda et al. 2016). The proposal is built from the encoders: z from the uniform mixture
of the unimodal posteriors q(z | x_m) (the MMVAE family's), each w_m from its own q(w_m | x_m).
Nothing of the training objective is used: only the encoders, the decoders' likelihoods and the
densities, so the number compares models trained by any objective and with any prior on z.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from moe_ebm_jax.vae import distributions as dists
from moe_ebm_jax.vae import models


def log_importance_weights(vae: models.MultimodalVAE, params, x: models.Data, key: jax.Array,
                           log_prior_z: Callable[[jax.Array], jax.Array],
                           num_samples: int) -> jax.Array:
  """log p(z) + sum_m [log p(w_m) + log p(x_m | w_m, z)] - log r(z, w | X) of K proposal draws:
  (K, B). log_prior_z: z (..., Dz) -> (...), normalised."""
  post = vae.encode(params, x)
  family = vae.distribution
  m, b = post.z_loc.shape[:2]
  k_pick, k_z, k_w = jax.random.split(key, 3)
  rows = jnp.arange(b)
  expert = jax.random.randint(k_pick, (num_samples, b), 0, m)
  z = dists.sample(family, k_z, post.z_loc[expert, rows], post.z_scale[expert, rows])  # (K, B, Dz)
  log_q_z = jax.nn.logsumexp(
      dists.log_prob(family, z[None], post.z_loc[:, None], post.z_scale[:, None]), axis=0
  ) - np.log(m)
  w_shape = (m, num_samples, b, post.w_loc.shape[-1])
  w = dists.sample(family, k_w, jnp.broadcast_to(post.w_loc[:, None], w_shape),
                   jnp.broadcast_to(post.w_scale[:, None], w_shape))  # (M, K, B, Dw)
  log_q_w = dists.log_prob(family, w, post.w_loc[:, None], post.w_scale[:, None]).sum(0)
  log_p_w = dists.log_prob(family, w, 0.0, 1.0).sum(0)
  latents = jnp.concatenate([w, jnp.broadcast_to(z[None], (m,) + z.shape)], axis=-1)
  log_px = vae.log_likelihood(params, latents, x).sum(0)  # (K, B)
  return log_px + log_prior_z(z) + log_p_w - log_q_z - log_q_w


def log_marginal_likelihood(vae: models.MultimodalVAE, params, x: models.Data, key: jax.Array,
                            log_prior_z: Callable[[jax.Array], jax.Array],
                            num_samples: int = 1000, chunk: int = 250) -> jax.Array:
  """The importance-sampled log p(X) per example, (B,), from num_samples draws taken in chunks
  (memory grows with the chunk, not with K)."""
  if num_samples % chunk:
    raise ValueError(f'num_samples={num_samples} must be a multiple of chunk={chunk}.')
  keys = jax.random.split(key, num_samples // chunk)
  log_w = jax.lax.map(
      lambda k: log_importance_weights(vae, params, x, k, log_prior_z, chunk), keys)
  log_w = log_w.reshape((num_samples,) + log_w.shape[2:])
  return jax.nn.logsumexp(log_w, axis=0) - np.log(num_samples)
