"""The multimodal VAE backbone (MMVAE+) and the latent EBM as pure functions over params pytrees.

One encoder and one decoder per modality, with parameters stacked on a leading modality axis M.
They are applied modality by modality (unrolled, or with jax.lax.map), not with jax.vmap:
vmapping a conv over stacked params becomes a grouped convolution, which XLA:CPU runs about 16x
slower (measured: a smoke-width MMVAE+ step took 1.21 s vmapped and 0.075 s unrolled).

VAE params:  {'encoders': (M, ...) Encoder params, 'decoders': (M, ...) Decoder params,
              'aux_prior_logits': (M, latent_w)}  (learnable scales of the auxiliary priors r_m(w))
EBM params:  EnergyMLP params; f_a(z) = energy_apply(params, z) is the NEGATIVE energy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from moe_ebm_jax import distributions as dists
from moe_ebm_jax import networks

Params = Any
IMAGE_SHAPE = (networks.IMAGE_SIZE, networks.IMAGE_SIZE, 3)


def modality_params(stacked: Params, m: int) -> Params:
  """Modality m's slice of params stacked on a leading (M, ...) axis."""
  return jax.tree.map(lambda x: x[m], stacked)


class Posteriors(NamedTuple):
  """Unimodal Laplace posteriors q(w_m | x_m), q(z | x_m): each (M, B, latent)."""
  w_loc: jax.Array
  w_scale: jax.Array
  z_loc: jax.Array
  z_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class MultimodalVAE:
  """MMVAE+ backbone: private w_m and shared z, Laplace posteriors and likelihood.

  Hashable and static under jit; all state is in the params pytree.
  """
  num_modalities: int
  widths: tuple[int, int, int] = (64, 128, 256)
  latent_w: int = 32
  latent_z: int = 32
  likelihood_scale: float = 0.75  # Fixed Laplace scale of p(x | w, z) (MMVAE+).
  scale_eps: float = 1e-20  # The MMVAE+ reference's eta (config.model.scale_eps).
  # Multiplies every posterior scale (1: the reference). Below 1 the posteriors start less
  # noisy: MMVAE+'s softmax scales sum to D, so at initialisation each latent carries Laplace
  # noise of scale 1 against encoder means that vary by ~0.1 across examples, and a narrow
  # model can sit for thousands of steps with its decoders ignoring the latents.
  posterior_scale_multiplier: float = 1.0
  # Family of the posteriors and of the fixed priors p(z), p(w) = family(0, 1): 'laplace'
  # (MMVAE, MMVAE+) or 'gaussian' (MVAE, mmJSD, MoPoE). latent_w = 0: one shared latent only.
  distribution: str = 'laplace'
  # 'unroll': one copy of the network per modality in the program (fastest steps); 'map':
  # jax.lax.map over modalities (one copy: compiles several times faster, steps run slower).
  modality_loop: str = 'unroll'
  # How the conv kernels' gradients are computed (conv.py): 'auto' is fast on every backend.
  conv_backward: str = 'auto'
  param_init: str = 'pytorch'  # Parameter initialisation (networks.INITS).

  def _per_modality(self, apply_fn, stacked_params: Params, inputs: jax.Array):
    """apply_fn(params_m, inputs[m]) for every modality m, stacked on a leading axis M."""
    if self.modality_loop == 'map':
      return jax.lax.map(lambda args: apply_fn(*args), (stacked_params, inputs))
    outs = [apply_fn(modality_params(stacked_params, m), inputs[m])
            for m in range(self.num_modalities)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  @property
  def encoder(self) -> networks.Encoder:
    return networks.Encoder(self.widths, self.latent_w, self.latent_z,
                            conv_backward=self.conv_backward, param_init=self.param_init)

  @property
  def decoder(self) -> networks.Decoder:
    return networks.Decoder(self.widths, IMAGE_SHAPE[-1], conv_backward=self.conv_backward,
                            param_init=self.param_init)

  def init(self, key: jax.Array) -> Params:
    k_enc, k_dec = jax.random.split(key)
    m = self.num_modalities
    images = jnp.zeros((1,) + IMAGE_SHAPE)
    latents = jnp.zeros((1, self.latent_w + self.latent_z))
    params = {
        'encoders': jax.vmap(self.encoder.init, (0, None))(jax.random.split(k_enc, m), images),
        'decoders': jax.vmap(self.decoder.init, (0, None))(jax.random.split(k_dec, m), latents),
    }
    if self.latent_w:  # No empty arrays in the pytree: orbax refuses to save them.
      # Zero logits: every auxiliary prior starts as Laplace(0, 1 + eps).
      params['aux_prior_logits'] = jnp.zeros((m, self.latent_w))
    return params

  def encode(self, params: Params, images: jax.Array) -> Posteriors:
    """images (B, M, 28, 28, 3) -> posteriors with (M, B, latent) parameters."""
    w_loc, w_logits, z_loc, z_logits = self._per_modality(
        self.encoder.apply, params['encoders'], jnp.moveaxis(images, 1, 0))
    scale = lambda logits: self.posterior_scale_multiplier * dists.scale_from_logits(
        self.distribution, logits, self.scale_eps)
    return Posteriors(w_loc, scale(w_logits), z_loc, scale(z_logits))

  def decode(self, params: Params, latents: jax.Array) -> jax.Array:
    """latents (M, ..., latent_w + latent_z), row m for decoder m -> means (M, ..., 28, 28, 3)."""
    return self._per_modality(self.decoder.apply, params['decoders'], latents)

  def aux_prior_scale(self, params: Params) -> jax.Array:
    """Scales of the auxiliary priors r_m(w) = Laplace(0, scale_m): (M, latent_w)."""
    if 'aux_prior_logits' not in params:  # Single-latent models.
      return jnp.ones((self.num_modalities, 0))
    return dists.softmax_scale(params['aux_prior_logits'], self.scale_eps)

  def prior_log_prob(self, x: jax.Array) -> jax.Array:
    """log p(x) of the fixed prior family(0, I) of z and w: (..., D) -> (...)."""
    return dists.log_prob(self.distribution, x, 0.0, 1.0)

  def sample_prior(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Draws of the fixed prior family(0, I), shape (..., D)."""
    return dists.standard_sample(self.distribution, key, shape)

  def log_likelihood(self, targets: jax.Array, means: jax.Array) -> jax.Array:
    """Laplace log p(x | .) summed over pixels: (..., 28, 28, 3) x (..., 28, 28, 3) -> (...)."""
    lp = dists.laplace_log_prob_elementwise(targets, means, self.likelihood_scale)
    return lp.sum(axis=(-3, -2, -1))


def make_vae(config: ml_collections.ConfigDict) -> MultimodalVAE:
  return MultimodalVAE(num_modalities=config.data.num_modalities,
                       widths=tuple(config.model.widths),
                       latent_w=config.model.latent_w, latent_z=config.model.latent_z,
                       likelihood_scale=config.model.likelihood_scale,
                       posterior_scale_multiplier=config.model.posterior_scale_multiplier,
                       distribution=config.model.distribution,
                       modality_loop=config.model.modality_loop,
                       conv_backward=config.model.conv_backward,
                       param_init=config.model.param_init, scale_eps=config.model.scale_eps)


def make_energy(config: ml_collections.ConfigDict) -> networks.EnergyMLP:
  return networks.EnergyMLP(hidden=tuple(config.ebm.hidden), activation=config.ebm.activation,
                            param_init=config.ebm.param_init)


def base_log_prob(z: jax.Array) -> jax.Array:
  """log p0(z) of the fixed Laplace(0, I) prior (MMVAE+'s p(z) and p(w), and the EBM's base
  density): (..., D) -> (...)."""
  return dists.laplace_log_prob(z, 0.0, 1.0)
