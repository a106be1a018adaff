"""VAE objectives as pure functions: importance-weighted estimators and the MMVAE+ log-weights.

An objective maps (params, images, key) to (loss, aux). The estimators here are generic over a
`log_weights_fn` that returns log-weights of shape (S, K, B): S strata (the source modality of
a mixture-of-experts posterior), K importance samples, B examples.

  elbo:  -mean_{S,B} mean_K lw             (K = 1 gives the usual ELBO)
  iwae:  -mean_{S,B} logmeanexp_K lw       (Burda et al. 2016)
  dreg:  a surrogate whose gradient is the doubly-reparameterised IWAE gradient
         (Tucker et al. 2019): decoder gradients weighted by w~, encoder gradients through the
         samples by w~^2, with the posterior's parameters stopped in log q.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from moe_ebm_jax import distributions as dists
from moe_ebm_jax import models

ESTIMATORS = ('elbo', 'iwae', 'dreg')

# log_weights_fn(grad_weights, stop_posterior) -> (lw (S, K, B), aux). grad_weights (S, K, B) or
# None multiplies the gradient flowing back through the reparameterised samples.
LogWeightsFn = Callable[[jax.Array | None, bool], tuple[jax.Array, Any]]


def scale_gradient(x: jax.Array, weight: jax.Array) -> jax.Array:
  """Identity in the forward pass; multiplies the incoming gradient by `weight` (broadcast)."""
  return jax.lax.stop_gradient(x) + weight * (x - jax.lax.stop_gradient(x))


def logmeanexp(x: jax.Array, axis: int) -> jax.Array:
  return jax.nn.logsumexp(x, axis=axis) - jnp.log(x.shape[axis])


def importance_weighted_loss(log_weights_fn: LogWeightsFn,
                             estimator: str) -> tuple[jax.Array, jax.Array, Any]:
  """Returns (loss to minimise, bound per (S, B), aux of the evaluation used for the loss)."""
  if estimator == 'elbo':
    lw, aux = log_weights_fn(None, False)
    bound = lw.mean(axis=1)
    return -bound.mean(), bound, aux
  if estimator == 'iwae':
    lw, aux = log_weights_fn(None, False)
    bound = logmeanexp(lw, axis=1)
    return -bound.mean(), bound, aux
  if estimator == 'dreg':
    # First pass for the normalised weights (constants); the same key gives the same samples.
    lw0, _ = log_weights_fn(None, False)
    lw0 = jax.lax.stop_gradient(lw0)
    weights = jax.nn.softmax(lw0, axis=1)
    lw, aux = log_weights_fn(weights, True)
    loss = -(weights * lw).sum(axis=1).mean()
    return loss, logmeanexp(lw0, axis=1), aux
  raise ValueError(f'unknown estimator {estimator!r}; choose one of {ESTIMATORS}.')


class Latents(NamedTuple):
  """Reparameterised samples of one MMVAE+ step.

  w:     (M, K, B, latent_w)  w_r ~ q(w | x_r)
  z:     (M, K, B, latent_z)  z_r ~ q(z | x_r)
  w_aux: (M, M, K, B, latent_w)  [d, r]: w_d ~ r_d(w), used to decode modality d from source r
  """
  w: jax.Array
  z: jax.Array
  w_aux: jax.Array


def sample_latents(key: jax.Array, post: models.Posteriors, aux_scale: jax.Array,
                   num_samples: int) -> Latents:
  """Draws K samples per source from the posteriors, and auxiliary-prior w for cross decodes."""
  k_w, k_z, k_aux = jax.random.split(key, 3)
  m, b = post.w_loc.shape[:2]

  def draw(k, loc, scale):  # (M, B, D) -> (M, K, B, D)
    shape = (m, num_samples) + loc.shape[1:]
    return dists.laplace_sample(k, jnp.broadcast_to(loc[:, None], shape),
                                jnp.broadcast_to(scale[:, None], shape))

  aux_shape = (m, m, num_samples, b, aux_scale.shape[-1])
  w_aux = dists.laplace_sample(k_aux, jnp.zeros(aux_shape),
                               jnp.broadcast_to(aux_scale[:, None, None, None], aux_shape))
  return Latents(draw(k_w, post.w_loc, post.w_scale), draw(k_z, post.z_loc, post.z_scale), w_aux)


def mmvaeplus_log_weights(vae: models.MultimodalVAE, params, images: jax.Array,
                          post: models.Posteriors, latents: Latents,
                          log_prior_z: Callable[[jax.Array], jax.Array], beta: float):
  """MMVAE+ log-weights per source r, sample k, example b: (M, K, B), and their terms.

  lw_r = sum_d log p(x_d | w, z_r) + beta * (log p(z_r) + log p(w_r) - log q_mix(z_r | X)
                                             - log q(w_r | x_r)),
  decoding x_r from (w_r, z_r) and every other x_d from (w_d ~ r_d, z_r); q_mix is the uniform
  mixture of the M unimodal z-posteriors. images (B, M, 28, 28, 3).
  """
  w, z = latents.w, latents.z
  m = w.shape[0]
  # Decoder d reads source r: its own w where d == r, the auxiliary prior's otherwise.
  eye = jnp.eye(m, dtype=bool)[:, :, None, None, None]
  w_dec = jnp.where(eye, w[None], latents.w_aux)  # (Md, Mr, K, B, Dw)
  z_dec = jnp.broadcast_to(z[None], (m,) + z.shape)  # (Md, Mr, K, B, Dz)
  means = vae.decode(params, jnp.concatenate([w_dec, z_dec], axis=-1))
  targets = jnp.moveaxis(images, 1, 0)[:, None, None]  # (Md, 1, 1, B, 28, 28, 3)
  log_px = vae.log_likelihood(targets, means)  # (Md, Mr, K, B)

  log_qw = dists.laplace_log_prob(w, post.w_loc[:, None], post.w_scale[:, None])
  log_qz_each = dists.laplace_log_prob(z[:, None], post.z_loc[None, :, None],
                                       post.z_scale[None, :, None])  # (Mr, Mm, K, B)
  log_qz = dists.mixture_log_prob(log_qz_each, axis=1)
  log_pz = log_prior_z(z)
  log_pw = models.base_log_prob(w)
  recon = log_px.sum(axis=0)
  kl = log_qz + log_qw - log_pz - log_pw  # Single-sample estimate of the KL terms.
  lw = recon + beta * -kl
  terms = {'recon': recon, 'kl': kl, 'log_px_self': jnp.einsum('rrkb->rkb', log_px),
           'log_prior_z': log_pz}
  return lw, terms


class VaeAux(NamedTuple):
  """What the EBM half of the step needs from the VAE half (all gradient-stopped)."""
  post: models.Posteriors  # (M, B, .)
  latents: Latents
  metrics: dict[str, jax.Array]


def mmvaeplus_objective(vae: models.MultimodalVAE, params, images: jax.Array, key: jax.Array, *,
                        beta: float, num_samples: int, estimator: str,
                        log_prior_z: Callable[[jax.Array], jax.Array] = models.base_log_prob,
                        ) -> tuple[jax.Array, VaeAux]:
  """The MMVAE+ loss for a batch (B, M, 28, 28, 3). `log_prior_z` (..., D) -> (...) is the
  shared latent's prior (Laplace(0, 1), or f_a + log p0 for the EBM prior)."""
  post = vae.encode(params, images)
  aux_scale = vae.aux_prior_scale(params)

  def log_weights_fn(grad_weights, stop_posterior):
    latents = sample_latents(key, post, aux_scale, num_samples)
    if grad_weights is not None:
      g = grad_weights[..., None]
      latents = latents._replace(w=scale_gradient(latents.w, g), z=scale_gradient(latents.z, g))
    q = jax.tree.map(jax.lax.stop_gradient, post) if stop_posterior else post
    lw, terms = mmvaeplus_log_weights(vae, params, images, q, latents, log_prior_z, beta)
    return lw, (latents, terms)

  loss, bound, (latents, terms) = importance_weighted_loss(log_weights_fn, estimator)
  metrics = {'vae_loss': loss, 'bound': bound.mean(), 'recon': terms['recon'].mean(),
             'kl': terms['kl'].mean(), 'log_px_self': terms['log_px_self'].mean(),
             'posterior_scale_z': post.z_scale.mean()}
  stop = jax.lax.stop_gradient
  return loss, VaeAux(jax.tree.map(stop, post), jax.tree.map(stop, latents),
                      jax.tree.map(stop, metrics))
