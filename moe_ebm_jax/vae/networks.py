"""Networks: the MMVAE+ PolyMNIST encoder and decoder, and the latent energy MLP.

The conv nets follow the MMVAE+ reference for PolyMNIST (docs/method.md, section 3),
in NHWC layout: images are float32 (B, 28, 28, C). At widths (64, 128, 256), latent 32 + 32 and
3 channels one `Encoder` has 2,946,048 parameters and one `Decoder` 1,485,251, as in the
reference. Narrower widths (e.g. (8, 16, 32)) give the same architecture for CPU and smoke runs.

The energy network (section 1) is Pang et al.'s MLP: Dense-act-Dense-act-Dense(1), whose output
f_a(z) is the negative energy.

Initialisation (`param_init`): 'pytorch' (the default) draws every kernel and bias uniformly within
+-1/sqrt(fan_in), PyTorch's default for Conv2d and Linear and so the reference's; 'lecun' is
Flax's default (LeCun-normal kernels, i.e. three times the variance, and zero biases).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_ebm_jax.vae import conv

Dtype = Any
Array = jax.Array

IMAGE_SIZE = 28
LEAKY_SLOPE = 0.2


INITS = ('pytorch', 'lecun')


def pytorch_uniform(fan_in: int) -> nn.initializers.Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Conv2d/Linear kernels (its
  kaiming_uniform_ with a = sqrt(5)) and biases."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def kernel_init(init: str, fan_in: int) -> nn.initializers.Initializer:
  """The kernel initialiser of scheme `init` for a layer with `fan_in` inputs per output
  (in_features, or in_channels * kh * kw)."""
  _check_init(init)
  return pytorch_uniform(fan_in) if init == 'pytorch' else nn.initializers.lecun_normal()


def bias_init(init: str, fan_in: int) -> nn.initializers.Initializer:
  _check_init(init)
  return pytorch_uniform(fan_in) if init == 'pytorch' else nn.initializers.zeros_init()


def _check_init(init: str) -> None:
  if init not in INITS:
    raise ValueError(f'unknown initialisation {init!r}; choose one of {INITS}.')


def dense(features: int, fan_in: int, init: str, name: str, dtype: Dtype | None = None
          ) -> nn.Dense:
  """nn.Dense with the kernel and bias initialisers of scheme `init`."""
  return nn.Dense(features, dtype=dtype, kernel_init=kernel_init(init, fan_in),
                  bias_init=bias_init(init, fan_in), name=name)


def leaky_relu(x: Array) -> Array:
  return nn.leaky_relu(x, negative_slope=LEAKY_SLOPE)


def avg_pool_3x3_s2(x: Array) -> Array:
  """Average pool, kernel 3, stride 2, padding 1, padding counted: (B, H, W, C) -> (B, H', W', C).

  As PyTorch's AvgPool2d(3, 2, 1) (count_include_pad=True): every window divides by 9, so the
  zero padding darkens border outputs. H' = (H - 1) // 2 + 1, so 28 -> 14 -> 7.
  """
  return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                     count_include_pad=True)


def upsample_nearest_2x(x: Array) -> Array:
  """Nearest-neighbour upsampling by 2: (B, H, W, C) -> (B, 2H, 2W, C)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


class Conv3x3(nn.Module):
  """3x3 stride-1 convolution, zero padding 1, with bias: (N, H, W, C) -> (N, H, W, features).

  The same parameters ('kernel' (3, 3, C, features), 'bias') and outputs as
  nn.Conv(features, (3, 3), padding=1) (with param_init='lecun', the same initialisation too); the
  kernel gradient is computed as conv.py says (`backward`: 'auto', 'xla' or 'matmul'), fast on
  XLA:CPU.
  """
  features: int
  backward: str = 'auto'
  dtype: Dtype | None = None
  param_init: str = 'pytorch'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = 9 * x.shape[-1]
    kernel = self.param('kernel', kernel_init(self.param_init, fan_in),
                        (3, 3, x.shape[-1], self.features))
    bias = self.param('bias', bias_init(self.param_init, fan_in), (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    lead = x.shape[:-3]
    y = conv.conv3x3(x.reshape((-1,) + x.shape[-3:]), kernel, self.backward)
    return y.reshape(lead + y.shape[1:]) + bias


def _conv3x3(features: int, name: str, dtype: Dtype | None, backward: str,
             init: str) -> Conv3x3:
  return Conv3x3(features, backward, dtype, init, name=name)


class ResBlock(nn.Module):
  """Pre-activation residual block without normalisation: (B, H, W, fin) -> (B, H, W, fout).

  residual = conv3x3(lrelu(conv3x3(lrelu(x)))) with widths fin -> min(fin, fout) -> fout;
  shortcut = x if fin == fout else a bias-free 1x1 conv; out = shortcut + 0.1 * residual.
  fin is read from the input.
  """
  features_out: int
  residual_scale: float = 0.1
  dtype: Dtype | None = None
  conv_backward: str = 'auto'  # How the 3x3 kernels' gradients are computed (conv.py).
  param_init: str = 'pytorch'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features_in = x.shape[-1]
    hidden = min(features_in, self.features_out)
    conv3x3 = functools.partial(_conv3x3, dtype=self.dtype, backward=self.conv_backward,
                                init=self.param_init)
    dx = conv3x3(hidden, 'conv_0')(leaky_relu(x))
    dx = conv3x3(self.features_out, 'conv_1')(leaky_relu(dx))
    if features_in == self.features_out:
      shortcut = x
    else:
      shortcut = nn.Conv(self.features_out, (1, 1), use_bias=False, dtype=self.dtype,
                         kernel_init=kernel_init(self.param_init, features_in), name='shortcut')(x)
    return shortcut + self.residual_scale * dx


class ConvTower(nn.Module):
  """One encoder tower: images (B, 28, 28, C) -> (loc, scale_logits), each (B, latent_dim).

  conv3x3 C -> w0; ResBlock(w0, w0); pool -> 14x14; ResBlock(w0, w1); pool -> 7x7;
  ResBlock(w1, w2); flatten (B, 49 * w2); two Dense heads.
  """
  widths: Sequence[int] = (64, 128, 256)
  latent_dim: int = 32
  dtype: Dtype | None = None
  conv_backward: str = 'auto'
  param_init: str = 'pytorch'

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    w0, w1, w2 = self.widths
    block = functools.partial(ResBlock, dtype=self.dtype, conv_backward=self.conv_backward,
                              param_init=self.param_init)
    h = _conv3x3(w0, 'conv_in', self.dtype, self.conv_backward, self.param_init)(x)
    h = block(w0, name='block_0')(h)
    h = avg_pool_3x3_s2(h)
    h = block(w1, name='block_1')(h)
    h = avg_pool_3x3_s2(h)
    h = block(w2, name='block_2')(h)
    h = h.reshape(h.shape[:-3] + (-1,))
    loc = dense(self.latent_dim, h.shape[-1], self.param_init, 'loc', self.dtype)(h)
    scale_logits = dense(self.latent_dim, h.shape[-1], self.param_init, 'scale_logits', self.dtype)(h)
    return loc, scale_logits


class Encoder(nn.Module):
  """One modality's encoder: two separate towers, one for w (private) and one for z (shared).

  images (B, 28, 28, C) -> (w_loc, w_scale_logits, z_loc, z_scale_logits), shapes (B, latent_w)
  twice then (B, latent_z) twice. Turning logits into scales is the model's job. With
  latent_w = 0 there is no w tower and the w outputs are (B, 0).
  """
  widths: Sequence[int] = (64, 128, 256)
  latent_w: int = 32
  latent_z: int = 32
  dtype: Dtype | None = None
  conv_backward: str = 'auto'
  param_init: str = 'pytorch'

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array, Array, Array]:
    z_loc, z_scale_logits = ConvTower(self.widths, self.latent_z, self.dtype, self.conv_backward,
                                      self.param_init, name='tower_z')(x)
    if not self.latent_w:  # Single-latent models (MMVAE, MVAE, mmJSD, MoPoE): no w tower.
      empty = jnp.zeros(z_loc.shape[:-1] + (0,), z_loc.dtype)
      return empty, empty, z_loc, z_scale_logits
    w_loc, w_scale_logits = ConvTower(self.widths, self.latent_w, self.dtype, self.conv_backward,
                                      self.param_init, name='tower_w')(x)
    return w_loc, w_scale_logits, z_loc, z_scale_logits


class Decoder(nn.Module):
  """One modality's decoder: latents (..., latent_w + latent_z) -> means (..., H, W, C).

  The input is concat([w, z], -1); any leading batch shape (e.g. (K, B)) is flattened and restored.
  Dense -> (H/4, W/4, w2) (7 x 7 for 28 x 28); ResBlock(w2, w1); upsample 2x; ResBlock(w1, w0);
  upsample 2x; ResBlock(w0, w0); LeakyReLU; conv3x3 w0 -> C. The output is the likelihood's
  parameter (the Laplace mean: no sigmoid). H and W must be multiples of 4.
  """
  widths: Sequence[int] = (64, 128, 256)
  out_channels: int = 3
  dtype: Dtype | None = None
  conv_backward: str = 'auto'
  param_init: str = 'pytorch'
  image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)

  @nn.compact
  def __call__(self, latent: Array) -> Array:
    w0, w1, w2 = self.widths
    height, width = self.image_size
    if height % 4 or width % 4:
      raise ValueError(f'Decoder image_size {self.image_size}: H and W must be multiples of 4.')
    base_h, base_w = height // 4, width // 4
    lead = latent.shape[:-1]
    h = latent.reshape((-1, latent.shape[-1]))
    h = dense(base_h * base_w * w2, h.shape[-1], self.param_init, 'dense_in', self.dtype)(h)
    h = h.reshape((-1, base_h, base_w, w2))
    block = functools.partial(ResBlock, dtype=self.dtype, conv_backward=self.conv_backward,
                              param_init=self.param_init)
    h = block(w1, name='block_0')(h)
    h = upsample_nearest_2x(h)
    h = block(w0, name='block_1')(h)
    h = upsample_nearest_2x(h)
    h = block(w0, name='block_2')(h)
    h = _conv3x3(self.out_channels, 'conv_out', self.dtype, self.conv_backward,
                 self.param_init)(leaky_relu(h))
    return h.reshape(lead + h.shape[1:])


def _exact_gelu(x: Array) -> Array:
  # PyTorch's nn.GELU default (used by Pang et al.) is the erf form, not the tanh approximation.
  return nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'gelu': _exact_gelu,
    'leaky_relu': leaky_relu,  # Slope 0.2.
    'swish': nn.swish,
    'silu': nn.silu,
    'elu': nn.elu,
    'tanh': jnp.tanh,
    'relu': nn.relu,
}


def get_activation(name: str) -> Callable[[Array], Array]:
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f'unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.') from None


class EnergyMLP(nn.Module):
  """Negative energy f_a: latents (..., D) -> scalars (...,).

  Dense(h_1) - act - ... - Dense(h_n) - act - Dense(1), biases throughout.
  """
  hidden: Sequence[int] = (200, 200)
  activation: str = 'gelu'
  dtype: Dtype | None = None
  param_init: str = 'pytorch'

  @nn.compact
  def __call__(self, z: Array) -> Array:
    act = get_activation(self.activation)
    h = z
    for i, width in enumerate(self.hidden):
      h = act(dense(width, h.shape[-1], self.param_init, f'dense_{i}', self.dtype)(h))
    return dense(1, h.shape[-1], self.param_init, 'dense_out', self.dtype)(h)[..., 0]


def count_params(params: Any) -> int:
  """Number of scalars in a pytree of arrays or jax.ShapeDtypeStructs (e.g. from eval_shape)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
