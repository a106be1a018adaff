"""The multimodal VAE backbone (MMVAE+) and the latent EBM as pure functions over params pytrees.

One encoder and one decoder per modality (modalities.py: each modality's spec names its families
and likelihood). A batch's data `x` is a dict {modality name: (B, *shape)}; a model whose
modalities all share one spec (PolyMNIST) also takes a stacked array (B, M, *shape).

Modalities that share a spec keep their parameters stacked on a leading modality axis M and are
applied modality by modality (unrolled, or with jax.lax.map), not with jax.vmap: vmapping a conv
over stacked params becomes a grouped convolution, which XLA:CPU runs about 16x slower (measured:
a smoke-width MMVAE+ step took 1.21 s vmapped and 0.075 s unrolled). Different specs get
parameters of their own, keyed by modality name, applied one by one.

VAE params:  {'encoders': (M, ...) stacked Encoder params, or {name: params},
              'decoders': the same for the decoders,
              'aux_prior_logits': (M, latent_w)}  (learnable scales of the auxiliary priors r_m(w))
EBM params:  EnergyMLP params; f_a(z) = energy_apply(params, z) is the NEGATIVE energy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from moe_ebm_jax.vae import distributions as dists
from moe_ebm_jax.vae import modalities as modalities_lib
from moe_ebm_jax.vae import networks

Params = Any
IMAGE_SHAPE = (networks.IMAGE_SIZE, networks.IMAGE_SIZE, 3)
# How the per-modality networks are laid out in the program (MultimodalVAE.modality_loop).
MODALITY_LOOPS = ('unroll', 'map')
Data = Mapping[str, jax.Array] | jax.Array  # {name: (B, *shape)}, or (B, M, *shape) stacked.


def modality_params(stacked: Params, m: int) -> Params:
  """Modality m's slice of params stacked on a leading (M, ...) axis."""
  return jax.tree.map(lambda x: x[m], stacked)


class Posteriors(NamedTuple):
  """Unimodal posteriors q(w_m | x_m), q(z | x_m): each (M, B, latent)."""
  w_loc: jax.Array
  w_scale: jax.Array
  z_loc: jax.Array
  z_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class MultimodalVAE:
  """MMVAE+ backbone: private w_m and shared z, posteriors of one family, and each modality's
  own likelihood.

  Hashable and static under jit; all state is in the params pytree. `modalities`: the specs
  of the M modalities, in order (a dataset's: datasets.get(config.data).modalities).
  """
  modalities: tuple[modalities_lib.ModalitySpec, ...]
  widths: tuple[int, int, int] = (64, 128, 256)
  latent_w: int = 32
  latent_z: int = 32
  likelihood_scale: float = 0.75  # Laplace/Gaussian scale of specs that set none (MMVAE+: 0.75).
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
  mlp_hidden: tuple[int, ...] = (256, 256)  # Hidden widths of the MLP and embedding families.
  # Stack the params of modalities whose specs are equal (one batched program); False applies
  # every modality one by one with params of its own, as for different specs.
  stack_identical: bool = True
  # One weight per modality on log p(x_m | .) in the training objectives (MVAE's lambda_m,
  # MoPoE's rec_weights); () : all 1, the MMVAE+ reference.
  likelihood_weights: tuple[float, ...] = ()

  def __post_init__(self):
    specs = tuple(self.modalities)
    if not specs:
      raise ValueError('MultimodalVAE needs the specs of its modalities (a dataset\'s: '
                       'datasets.get(config.data).modalities).')
    modalities_lib.check_specs(specs)
    object.__setattr__(self, 'modalities', specs)
    weights = tuple(float(w) for w in self.likelihood_weights)
    if weights and (len(weights) != len(specs) or not all(0 <= w < float('inf') for w in weights)):
      raise ValueError(f'likelihood_weights={self.likelihood_weights}: expected {len(specs)} '
                       f'finite weights >= 0, one per modality {self.names}, or () for all 1.')
    object.__setattr__(self, 'likelihood_weights', weights)

  @property
  def num_modalities(self) -> int:
    """M."""
    return len(self.modalities)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(s.name for s in self.modalities)

  @property
  def stacked(self) -> bool:
    """Whether every modality has the same spec (but its name): stacked params, one program."""
    return self.stack_identical and len({s.unnamed() for s in self.modalities}) == 1

  @property
  def options(self) -> modalities_lib.NetworkOptions:
    return modalities_lib.NetworkOptions(tuple(self.widths), tuple(self.mlp_hidden),
                                         self.conv_backward, self.param_init)

  def _encoder(self, m: int):
    return modalities_lib.encoder(self.modalities[m], self.latent_w, self.latent_z, self.options)

  def _decoder(self, m: int):
    return modalities_lib.decoder(self.modalities[m], self.options)

  @property
  def encoder(self):
    """The encoder of modality 0 (of every modality, when stacked)."""
    return self._encoder(0)

  @property
  def decoder(self):
    """The decoder of modality 0 (of every modality, when stacked)."""
    return self._decoder(0)

  def _per_modality(self, which: str, params: Params, inputs):
    """module_m.apply(params_m, inputs[m]) for every modality m, stacked on a leading axis M.
    `inputs` is stacked (M, ...) or a sequence of M arrays."""
    if self.stacked:
      apply_fn = (self.encoder if which == 'encoders' else self.decoder).apply
      if self.modality_loop == 'map':
        return jax.lax.map(lambda args: apply_fn(*args), (params, inputs))
      outs = [apply_fn(modality_params(params, m), inputs[m]) for m in range(self.num_modalities)]
    else:
      make = self._encoder if which == 'encoders' else self._decoder
      outs = [make(m).apply(params[name], inputs[m]) for m, name in enumerate(self.names)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  def data(self, x: Data):
    """The modalities of `x` in spec order: a stacked (M, B, *shape) array when the model is
    stacked, else a list of M arrays (B, *shape)."""
    if isinstance(x, Mapping):
      missing = [n for n in self.names if n not in x]
      if missing:
        raise ValueError(f'the batch has no modality {missing} (it has {sorted(x)}).')
      arrays = [x[n] for n in self.names]
      return jnp.stack(arrays) if self.stacked else arrays
    if not self.stacked:
      raise ValueError('modalities with different specs come as a dict {name: array}, not as '
                       'one stacked array.')
    return jnp.moveaxis(x, 1, 0)

  def init(self, key: jax.Array) -> Params:
    k_enc, k_dec = jax.random.split(key)
    m = self.num_modalities
    latents = jnp.zeros((1, self.latent_w + self.latent_z))
    if self.stacked:
      spec = self.modalities[0]
      x = jnp.zeros((1,) + tuple(spec.shape), spec.dtype)
      params = {
          'encoders': jax.vmap(self.encoder.init, (0, None))(jax.random.split(k_enc, m), x),
          'decoders': jax.vmap(self.decoder.init, (0, None))(jax.random.split(k_dec, m), latents),
      }
    else:
      enc_keys, dec_keys = jax.random.split(k_enc, m), jax.random.split(k_dec, m)
      params = {'encoders': {}, 'decoders': {}}
      for i, spec in enumerate(self.modalities):
        x = jnp.zeros((1,) + tuple(spec.shape), spec.dtype)
        params['encoders'][spec.name] = self._encoder(i).init(enc_keys[i], x)
        params['decoders'][spec.name] = self._decoder(i).init(dec_keys[i], latents)
    if self.latent_w:  # No empty arrays in the pytree: orbax refuses to save them.
      # Zero logits: every auxiliary prior starts as Laplace(0, 1 + eps).
      params['aux_prior_logits'] = jnp.zeros((m, self.latent_w))
    return params

  def encode(self, params: Params, x: Data) -> Posteriors:
    """x {name: (B, *shape)} (or stacked (B, M, *shape)) -> posteriors with (M, B, latent)
    parameters."""
    w_loc, w_logits, z_loc, z_logits = self._per_modality('encoders', params['encoders'],
                                                          self.data(x))
    scale = lambda logits: self.posterior_scale_multiplier * dists.scale_from_logits(
        self.distribution, logits, self.scale_eps)
    return Posteriors(w_loc, scale(w_logits), z_loc, scale(z_logits))

  def decode(self, params: Params, latents: jax.Array):
    """latents (M, ..., latent_w + latent_z), row m for decoder m -> the decoders' outputs
    (the likelihoods' parameters): stacked (M, ..., *out_shape) when the model is stacked,
    else a list of M arrays (..., *out_shape_m). See `means` for them as data."""
    if self.stacked:
      return self._per_modality('decoders', params['decoders'], latents)
    return [self._decoder(m).apply(params['decoders'][name], latents[m])
            for m, name in enumerate(self.names)]

  def means(self, outputs) -> list[jax.Array]:
    """Decoder outputs (as `decode` returns them) -> per modality the likelihood's mean as data
    (..., *shape), or class probabilities (..., K) for a categorical modality."""
    return [modalities_lib.likelihood(spec).mean(spec, outputs[m])
            for m, spec in enumerate(self.modalities)]

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

  def _scale(self, spec) -> float:
    return self.likelihood_scale if spec.likelihood_scale is None else spec.likelihood_scale

  def log_likelihood(self, params: Params, latents: jax.Array, x: Data) -> jax.Array:
    """log p(x_m | latents[m]) of every modality m, summed over the example's elements.

    latents (M, *lead, B, D), row m read by decoder m; x {name: (B, *shape)} (or stacked) is
    broadcast over `lead` -> (M, *lead, B).
    """
    data = self.data(x)
    outputs = self.decode(params, latents)
    lead = latents.ndim - 3  # Axes between M and B.
    if self.stacked:
      spec = self.modalities[0]
      targets = data.reshape(data.shape[:1] + (1,) * lead + data.shape[1:])
      return modalities_lib.likelihood(spec).log_prob(spec, targets, outputs, self._scale(spec))
    out = []
    for m, spec in enumerate(self.modalities):
      target = data[m].reshape((1,) * lead + data[m].shape)
      out.append(modalities_lib.likelihood(spec).log_prob(spec, target, outputs[m],
                                                          self._scale(spec)))
    return jnp.stack(out)

  def weighted_log_likelihood(self, params: Params, latents: jax.Array, x: Data) -> jax.Array:
    """log_likelihood (M, *lead, B) with row m times likelihood_weights[m]: the reconstruction
    term of the training objectives. Densities (log p(X), posterior Langevin) stay unweighted."""
    log_px = self.log_likelihood(params, latents, x)
    if not self.likelihood_weights:
      return log_px
    weights = jnp.asarray(self.likelihood_weights, log_px.dtype)
    return log_px * weights.reshape((-1,) + (1,) * (log_px.ndim - 1))


def make_vae(config: ml_collections.ConfigDict,
             specs: tuple[modalities_lib.ModalitySpec, ...]) -> MultimodalVAE:
  """The VAE of `config` over the modality specs of its dataset (`specs`)."""
  return MultimodalVAE(modalities=tuple(specs),
                       mlp_hidden=tuple(config.model.get('mlp_hidden', (256, 256))),
                       widths=tuple(config.model.widths),
                       latent_w=config.model.latent_w, latent_z=config.model.latent_z,
                       likelihood_scale=config.model.likelihood_scale,
                       posterior_scale_multiplier=config.model.posterior_scale_multiplier,
                       distribution=config.model.distribution,
                       modality_loop=config.model.modality_loop,
                       conv_backward=config.model.conv_backward,
                       param_init=config.model.param_init, scale_eps=config.model.scale_eps,
                       likelihood_weights=tuple(config.model.get('likelihood_weights', ())))


def make_energy(config: ml_collections.ConfigDict) -> networks.EnergyMLP:
  return networks.EnergyMLP(hidden=tuple(config.ebm.hidden), activation=config.ebm.activation,
                            param_init=config.ebm.param_init)


def standard_laplace_log_prob(z: jax.Array) -> jax.Array:
  """log p0(z) of the fixed Laplace(0, I) prior (MMVAE+'s p(z) and p(w), and the EBM's base
  density): (..., D) -> (...)."""
  return dists.laplace_log_prob(z, 0.0, 1.0)
