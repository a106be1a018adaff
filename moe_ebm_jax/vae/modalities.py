"""Modalities: what one kind of data is (a `ModalitySpec`), and the registered encoder, decoder
and likelihood families a spec names.

A dataset is a list of specs and a data source (datasets.py). A model has one encoder and one
decoder per modality, built from the spec's families; its likelihood p(x_m | w_m, z) is the
spec's. Modalities whose specs are equal but for the name (PolyMNIST's five images) keep their
parameters stacked on a leading axis and run as one batched program (models.py).

Families (each a name in a registry that refuses duplicates; `register_encoder`,
`register_decoder`, `register_likelihood`, `register_coherence` add one):
  encoders: 'resnet' (the MMVAE+ conv towers; images (H, W, C), H and W multiples of 4),
            'mlp' (any shape, flattened; categorical data one-hot), 'embedding' (categorical)
  decoders: 'resnet' (images), 'mlp' (any output shape)
  likelihoods: 'laplace' and 'gaussian' (fixed scale), 'bernoulli' (data in [0, 1]),
            'categorical' (integer labels)
  coherence readers: 'classifier', 'label', 'none' (coherence_scorers.py), and one's own
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_ebm_jax import registry
from moe_ebm_jax.vae import distributions as dists
from moe_ebm_jax.vae import networks

DTYPES = ('float32', 'int32')
# How coherence reads a modality's decodes as classes (coherence_scorers.py): the built-in ways,
# and readers of one's own (`register_coherence`).
COHERENCE = ('classifier', 'label', 'none')
COHERENCE_READERS: registry.Registry = registry.Registry('coherence reader')


def register_coherence(name: str):
  """Decorator: registers a coherence reader factory under `name` (a spec's `coherence`):
  factory(config, spec, dataset) -> (read, info), read mapping a batch of the modality's decodes
  (N, *shape) to classes int32 (N,), info a dict {'classifier': what it is, 'test_accuracy':
  its accuracy on the dataset's test split}, which the report and the log show."""
  if name in COHERENCE:
    raise ValueError(f'coherence reader {name!r} is built in; register another name.')
  return COHERENCE_READERS.register(name)


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
  """One modality. Hashable: models built from specs stay static under jit.

  name: the key of this modality in a batch's 'x' dict.
  shape: one example's shape, e.g. (28, 28, 3) for an image, (16,) for a vector, () for a label.
  dtype: the model's input: 'float32' (stored uint8 images are scaled to [0, 1] by the input
    pipeline) or 'int32' (categorical labels).
  encoder, decoder, likelihood: family names (ENCODERS, DECODERS, LIKELIHOODS).
  likelihood_scale: the scale of a 'laplace' or 'gaussian' likelihood (None: the model's
    config.model.likelihood_scale).
  num_classes: categories of a categorical modality.
  coherence: how a decode of this modality is scored against the example's label: 'classifier'
    (a classifier of this modality, trained on demand and cached), 'label' (the modality is the
    label: a categorical decode is read directly), 'none' (not scored).
  """
  name: str
  shape: tuple[int, ...]
  dtype: str = 'float32'
  encoder: str = 'resnet'
  decoder: str = 'resnet'
  likelihood: str = 'laplace'
  likelihood_scale: float | None = None
  num_classes: int = 0
  coherence: str = 'classifier'

  @property
  def kind(self) -> str:
    """How figures show it: 'image' (H, W, 1 or 3), 'categorical', or 'vector'."""
    if self.likelihood == 'categorical':
      return 'categorical'
    if len(self.shape) == 3 and self.shape[-1] in (1, 3):
      return 'image'
    return 'vector'

  @property
  def is_rgb_image(self) -> bool:
    return self.kind == 'image' and self.shape[-1] == 3

  def unnamed(self) -> ModalitySpec:
    """The spec without its name: equal for modalities that can share stacked params."""
    return dataclasses.replace(self, name='')


def image_spec(name: str, shape: tuple[int, int, int] = (28, 28, 3), **kwargs) -> ModalitySpec:
  """An image modality: ResNet encoder and decoder, Laplace likelihood (MMVAE+'s)."""
  return ModalitySpec(name, tuple(shape), **kwargs)


def vector_spec(name: str, dim: int, **kwargs) -> ModalitySpec:
  """A real vector modality: MLP encoder and decoder, Gaussian likelihood."""
  kwargs = {'encoder': 'mlp', 'decoder': 'mlp', 'likelihood': 'gaussian', **kwargs}
  return ModalitySpec(name, (int(dim),), **kwargs)


def label_spec(name: str, num_classes: int, **kwargs) -> ModalitySpec:
  """A categorical modality (int32 labels in [0, num_classes)): embedding encoder, MLP decoder
  of logits, categorical likelihood; its coherence is read from the decode."""
  kwargs = {'encoder': 'embedding', 'decoder': 'mlp', 'likelihood': 'categorical',
            'coherence': 'label', **kwargs}
  return ModalitySpec(name, (), 'int32', num_classes=int(num_classes), **kwargs)


# ----------------------------------------------------------------------------- likelihoods


@dataclasses.dataclass(frozen=True)
class Likelihood:
  """A likelihood family. The decoder outputs `out_shape(spec)` per example.

  log_prob(spec, x, out, scale) -> log p(x | out) summed over the example's axes: x
    (..., *spec.shape), out (..., *out_shape) -> (...).
  mean(spec, out) -> the decode as data: means (clipped to [0, 1] by callers that show images),
    class probabilities (..., K) for a categorical.
  """
  log_prob: Callable[..., jax.Array]
  mean: Callable[..., jax.Array]
  out_shape: Callable[[ModalitySpec], tuple[int, ...]] = lambda spec: spec.shape
  dtypes: tuple[str, ...] = ('float32',)


def _event_axes(spec: ModalitySpec) -> tuple[int, ...]:
  return tuple(range(-len(spec.shape), 0))


def _laplace_log_prob(spec, x, out, scale):
  return dists.laplace_log_prob_elementwise(x, out, scale).sum(axis=_event_axes(spec))


def _gaussian_log_prob(spec, x, out, scale):
  return dists.normal_log_prob_elementwise(x, out, scale).sum(axis=_event_axes(spec))


def _bernoulli_log_prob(spec, x, out, scale):
  del scale  # out: logits.
  return (x * out - jax.nn.softplus(out)).sum(axis=_event_axes(spec))


def _categorical_log_prob(spec, x, out, scale):
  del spec, scale  # out: logits (..., K); x: int (...).
  logp = jax.nn.log_softmax(out, axis=-1)
  x = jnp.broadcast_to(x, out.shape[:-1])
  return jnp.take_along_axis(logp, x[..., None].astype(jnp.int32), axis=-1)[..., 0]


LIKELIHOODS: registry.Registry = registry.Registry('likelihood')


def register_likelihood(name: str, likelihood: Likelihood) -> Likelihood:
  return LIKELIHOODS.add(name, likelihood)


register_likelihood('laplace', Likelihood(_laplace_log_prob, lambda spec, out: out))
register_likelihood('gaussian', Likelihood(_gaussian_log_prob, lambda spec, out: out))
register_likelihood('bernoulli', Likelihood(_bernoulli_log_prob,
                                            lambda spec, out: jax.nn.sigmoid(out)))
register_likelihood('categorical', Likelihood(
    _categorical_log_prob, lambda spec, out: jax.nn.softmax(out, axis=-1),
    out_shape=lambda spec: spec.shape + (spec.num_classes,), dtypes=('int32',)))


def likelihood(spec: ModalitySpec) -> Likelihood:
  return _lookup(LIKELIHOODS, spec.likelihood, 'likelihood', spec)


# ----------------------------------------------------------------------------- networks


@dataclasses.dataclass(frozen=True)
class NetworkOptions:
  """What a family's networks read from config.model: conv widths (ResNet), hidden widths
  (MLP, embedding), the conv gradient mode and the initialisation scheme."""
  widths: tuple[int, int, int] = (64, 128, 256)
  mlp_hidden: tuple[int, ...] = (256, 256)
  conv_backward: str = 'auto'
  param_init: str = 'pytorch'


class MlpTower(nn.Module):
  """Flattened input (B, F) -> (loc, scale_logits), each (B, latent_dim): Dense-LeakyReLU layers
  then two Dense heads."""
  hidden: tuple[int, ...]
  latent_dim: int
  param_init: str = 'pytorch'

  @nn.compact
  def __call__(self, h):
    for i, width in enumerate(self.hidden):
      h = networks.leaky_relu(networks.dense(width, h.shape[-1], self.param_init, f'dense_{i}')(h))
    loc = networks.dense(self.latent_dim, h.shape[-1], self.param_init, 'loc')(h)
    return loc, networks.dense(self.latent_dim, h.shape[-1], self.param_init, 'scale_logits')(h)


class MlpEncoder(nn.Module):
  """x (B, *shape) -> (w_loc, w_scale_logits, z_loc, z_scale_logits) as networks.Encoder: one
  tower for z, one for w (none when latent_w = 0). Categorical input (B,) int is one-hot;
  `embed` > 0 embeds it in that many dimensions instead."""
  hidden: tuple[int, ...]
  latent_w: int
  latent_z: int
  num_classes: int = 0
  embed: int = 0
  param_init: str = 'pytorch'

  @nn.compact
  def __call__(self, x):
    if self.embed:
      h = nn.Embed(self.num_classes, self.embed, name='embed')(x)
    elif self.num_classes:
      h = jax.nn.one_hot(x, self.num_classes)
    else:
      h = x.reshape(x.shape[:1] + (-1,))
    z_loc, z_logits = MlpTower(self.hidden, self.latent_z, self.param_init, name='tower_z')(h)
    if not self.latent_w:
      empty = jnp.zeros(z_loc.shape[:-1] + (0,), z_loc.dtype)
      return empty, empty, z_loc, z_logits
    w_loc, w_logits = MlpTower(self.hidden, self.latent_w, self.param_init, name='tower_w')(h)
    return w_loc, w_logits, z_loc, z_logits


class MlpDecoder(nn.Module):
  """latents (..., D) -> outputs (..., *out_shape): Dense-LeakyReLU layers, a linear output."""
  hidden: tuple[int, ...]
  out_shape: tuple[int, ...]
  param_init: str = 'pytorch'

  @nn.compact
  def __call__(self, latent):
    h = latent
    for i, width in enumerate(self.hidden):
      h = networks.leaky_relu(networks.dense(width, h.shape[-1], self.param_init, f'dense_{i}')(h))
    out = networks.dense(math.prod(self.out_shape), h.shape[-1], self.param_init, 'dense_out')(h)
    return out.reshape(latent.shape[:-1] + self.out_shape)


# Encoder factories: (spec, latent_w, latent_z, options) -> a Flax module mapping x (B, *shape)
# to (w_loc, w_scale_logits, z_loc, z_scale_logits). Decoder factories: (spec, out_shape,
# options) -> a module mapping latents (..., latent_w + latent_z) to (..., *out_shape).
EncoderFactory = Callable[[ModalitySpec, int, int, NetworkOptions], nn.Module]
DecoderFactory = Callable[[ModalitySpec, tuple[int, ...], NetworkOptions], nn.Module]
ENCODERS: registry.Registry = registry.Registry('encoder family')
DECODERS: registry.Registry = registry.Registry('decoder family')


def register_encoder(name: str):
  """Decorator: registers an encoder factory under `name` (a spec's `encoder`)."""
  return ENCODERS.register(name)


def register_decoder(name: str):
  """Decorator: registers a decoder factory under `name` (a spec's `decoder`)."""
  return DECODERS.register(name)


@register_encoder('resnet')
def _resnet_encoder(spec, latent_w, latent_z, options):
  return networks.Encoder(options.widths, latent_w, latent_z, conv_backward=options.conv_backward,
                          param_init=options.param_init)


@register_decoder('resnet')
def _resnet_decoder(spec, out_shape, options):
  return networks.Decoder(options.widths, out_shape[-1], conv_backward=options.conv_backward,
                          param_init=options.param_init, image_size=tuple(out_shape[:2]))


@register_encoder('mlp')
def _mlp_encoder(spec, latent_w, latent_z, options):
  classes = spec.num_classes if spec.likelihood == 'categorical' else 0
  return MlpEncoder(tuple(options.mlp_hidden), latent_w, latent_z, classes,
                    param_init=options.param_init)


@register_encoder('embedding')
def _embedding_encoder(spec, latent_w, latent_z, options):
  return MlpEncoder(tuple(options.mlp_hidden), latent_w, latent_z, spec.num_classes,
                    embed=options.mlp_hidden[0], param_init=options.param_init)


@register_decoder('mlp')
def _mlp_decoder(spec, out_shape, options):
  return MlpDecoder(tuple(options.mlp_hidden), tuple(out_shape), param_init=options.param_init)


def encoder(spec: ModalitySpec, latent_w: int, latent_z: int,
            options: NetworkOptions) -> nn.Module:
  return _lookup(ENCODERS, spec.encoder, 'encoder', spec)(spec, latent_w, latent_z, options)


def decoder(spec: ModalitySpec, options: NetworkOptions) -> nn.Module:
  out_shape = likelihood(spec).out_shape(spec)
  return _lookup(DECODERS, spec.decoder, 'decoder', spec)(spec, out_shape, options)


def _lookup(components: dict, name: str, what: str, spec: ModalitySpec):
  try:
    return components[name]
  except KeyError:
    raise ValueError(f'modality {spec.name!r}: {what}={name!r} is not one of '
                     f'{sorted(components)}.') from None


# ----------------------------------------------------------------------------- checks

# Field names an example carries besides its modalities (datasets.py): a modality of that name
# would be overwritten by them.
RESERVED_NAMES = ('label',)


class DataError(ValueError):
  """A dataset's specs or data that do not fit: one line naming the modality and the field.
  main.py reports it as such, without a traceback."""


def check_spec(spec: ModalitySpec) -> None:
  """Raises DataError (one line, naming the modality and the field) for a spec whose parts do
  not fit together."""

  def fail(field, message):
    raise DataError(f'modality {spec.name!r}: {field} {message}')

  if not spec.name or not isinstance(spec.name, str):
    fail('name', f'{spec.name!r} must be a non-empty string')
  if spec.name in RESERVED_NAMES:
    fail('name', f'{spec.name!r} is reserved: every example carries its class label under it '
         "(datasets.py); name the modality otherwise, e.g. 'digit' or 'class'")
  if not all(isinstance(d, int) and d > 0 for d in spec.shape):
    fail('shape', f'{spec.shape!r} must be a tuple of positive integers')
  if spec.dtype not in DTYPES:
    fail('dtype', f'{spec.dtype!r} is not one of {DTYPES}')
  if spec.coherence not in COHERENCE and spec.coherence not in COHERENCE_READERS:
    fail('coherence', f'{spec.coherence!r} is not one of {COHERENCE + tuple(COHERENCE_READERS)} '
         '(modalities.register_coherence adds one)')
  for field, components in (('encoder', ENCODERS), ('decoder', DECODERS),
                            ('likelihood', LIKELIHOODS)):
    if getattr(spec, field) not in components:
      fail(field, f'{getattr(spec, field)!r} is not one of {sorted(components)}')
  lik = LIKELIHOODS[spec.likelihood]
  if spec.dtype not in lik.dtypes:
    fail('likelihood', f'{spec.likelihood!r} models {lik.dtypes} data, not {spec.dtype!r} '
         f'(shape {spec.shape})')
  if spec.likelihood == 'categorical':
    if spec.num_classes < 2:
      fail('num_classes', f'{spec.num_classes} must be >= 2 for a categorical modality')
    if spec.shape:
      fail('shape', f'{spec.shape} must be () for a categorical modality (one label)')
  if spec.likelihood in ('laplace', 'gaussian') and spec.likelihood_scale is not None:
    if not spec.likelihood_scale > 0:
      fail('likelihood_scale', f'{spec.likelihood_scale} must be > 0')
  if spec.encoder == 'resnet' or spec.decoder == 'resnet':
    field = 'encoder' if spec.encoder == 'resnet' else 'decoder'
    if len(spec.shape) != 3 or spec.dtype != 'float32':
      fail(field, f"'resnet' needs float images (H, W, C), not shape {spec.shape} {spec.dtype}")
    if spec.shape[0] % 4 or spec.shape[1] % 4:
      fail('shape', f"{spec.shape}: the 'resnet' family halves H and W twice: they must be "
           'multiples of 4 (28 and 32 are)')
  if spec.encoder == 'embedding' and spec.likelihood != 'categorical':
    fail('encoder', "'embedding' reads categorical labels: set likelihood='categorical'")
  if spec.coherence == 'label' and spec.likelihood != 'categorical':
    fail('coherence', "'label' reads a categorical decode: use 'classifier' or 'none'")


def check_specs(specs) -> None:
  if not specs:
    raise DataError('a dataset needs at least one modality spec.')
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise DataError(f'modality names must be unique, got {names}.')
  for spec in specs:
    check_spec(spec)


def check_data(spec: ModalitySpec, array: Any, what: str = 'data') -> None:
  """Raises DataError when `array` (N, *shape) does not fit `spec`: shape, dtype, values
  (finite; labels in range; in [0, 1] for a Bernoulli likelihood). Masked arrays are refused:
  a mask would be dropped, and missing values are not modelled."""
  if isinstance(array, np.ma.MaskedArray):
    raise DataError(f'modality {spec.name!r}: the {what} is a masked array; its mask would be '
                    'dropped here: declare missing rows to datasets.from_arrays (a masked array '
                    'there, None rows or observation masks).')
  array = np.asarray(array)
  if array.shape[1:] != tuple(spec.shape):
    raise DataError(f'modality {spec.name!r}: shape {array.shape[1:]} of the {what} differs '
                    f'from the spec\'s {tuple(spec.shape)} (arrays are (N, *shape)).')
  if spec.dtype == 'int32':
    if not np.issubdtype(array.dtype, np.integer):
      raise DataError(f'modality {spec.name!r}: dtype {array.dtype} of the {what}: the spec '
                      "says integer labels ('int32').")
    if array.size and (array.min() < 0 or array.max() >= spec.num_classes):
      raise DataError(f'modality {spec.name!r}: labels of the {what} span [{array.min()}, '
                      f'{array.max()}], outside [0, {spec.num_classes}) (num_classes).')
    return
  if not (np.issubdtype(array.dtype, np.floating) or array.dtype == np.uint8):
    raise DataError(f'modality {spec.name!r}: dtype {array.dtype} of the {what}: the spec '
                    'says float32 (or uint8 images, scaled to [0, 1]).')
  if array.dtype != np.uint8 and array.size:
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
      raise DataError(f'modality {spec.name!r}: {int(bad.sum())} of {len(array)} examples of the '
                      f'{what} hold NaN or infinite values (the first at index '
                      f'{int(np.argmax(bad))}): fill them, leave those examples out, or declare '
                      'whole missing rows (datasets.from_arrays, docs/usage.md).')
    if spec.likelihood == 'bernoulli' and (array.min() < 0 or array.max() > 1):
      raise DataError(f'modality {spec.name!r}: a bernoulli likelihood needs data in [0, 1]; '
                      f'the {what} spans [{array.min()}, {array.max()}].')


def to_model_input(spec: ModalitySpec, array: np.ndarray) -> np.ndarray:
  """Stored data -> what the model reads: uint8 -> float32 in [0, 1]; labels -> int32."""
  if spec.dtype == 'int32':
    return np.asarray(array, np.int32)
  if array.dtype == np.uint8:
    return array.astype(np.float32) * np.float32(1 / 255)
  return np.asarray(array, np.float32)


def check_source(source, specs: Sequence[ModalitySpec], what: str) -> None:
  """Fails early, naming the modality and the field, when the source's first example does not
  fit the specs (a missing modality, another shape, dtype or label range)."""
  if not len(source):
    raise DataError(f'the {what} is empty.')
  example = source[0]
  for spec in specs:
    if spec.name not in example:
      raise DataError(f'modality {spec.name!r}: the {what} has no such field '
                                     f'(it has {sorted(example)}).')
    check_data(spec, np.asarray(example[spec.name])[None], what)
