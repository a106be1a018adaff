"""Log-densities and reparameterised samplers for diagonal Laplace and Gaussian distributions.

Pure JAX functions. `loc`, `scale` and `x` broadcast against each other; the last axis is the
event dimension. The `*_log_prob` functions sum over it and return one log-density per example;
the `*_elementwise` variants do not sum, for callers that reduce over several axes themselves
(e.g. images, where the likelihood is summed over pixels and channels).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def laplace_log_prob_elementwise(x: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Laplace(loc, scale) log-density per element: broadcast shape of (x, loc, scale)."""
  return -jnp.abs(x - loc) / scale - jnp.log(scale) - _LOG_2


def normal_log_prob_elementwise(x: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Normal(loc, scale) log-density per element (scale = std): broadcast shape of the inputs."""
  return -0.5 * jnp.square((x - loc) / scale) - jnp.log(scale) - _HALF_LOG_2PI


def laplace_log_prob(x: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Diagonal Laplace log-density: (..., D) inputs (broadcast) -> (...), summed over D."""
  return laplace_log_prob_elementwise(x, loc, scale).sum(axis=-1)


def normal_log_prob(x: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Diagonal Gaussian log-density: (..., D) inputs (broadcast) -> (...), summed over D."""
  return normal_log_prob_elementwise(x, loc, scale).sum(axis=-1)


def _sample_shape_dtype(loc: jax.Array, scale: jax.Array) -> tuple[tuple[int, ...], jnp.dtype]:
  loc, scale = jnp.asarray(loc), jnp.asarray(scale)
  dtype = jnp.result_type(loc.dtype, scale.dtype, jnp.float32)
  return jnp.broadcast_shapes(loc.shape, scale.shape), dtype


def laplace_sample(key: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Reparameterised Laplace draw loc + scale * eps: shape broadcast(loc, scale).

  Gradients flow to `loc` and `scale` (eps ~ Laplace(0, 1) is independent of them).
  """
  shape, dtype = _sample_shape_dtype(loc, scale)
  return loc + scale * jax.random.laplace(key, shape, dtype)


def normal_sample(key: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Reparameterised Gaussian draw loc + scale * eps: shape broadcast(loc, scale)."""
  shape, dtype = _sample_shape_dtype(loc, scale)
  return loc + scale * jax.random.normal(key, shape, dtype)


def mixture_log_prob(log_probs: jax.Array, axis: int = 0) -> jax.Array:
  """Log-density of a uniform mixture: log mean_k exp(log_probs_k) along `axis`.

  Used for the mixture-of-experts posterior q(z|X) = (1/M) sum_m q(z|x_m): stack the M
  unimodal log-densities, e.g. (M, B) -> (B,) with axis=0. Stable (logsumexp).
  """
  num_components = log_probs.shape[axis]
  return jax.nn.logsumexp(log_probs, axis=axis) - math.log(num_components)


def softmax_scale(logits: jax.Array, eps: float = 1e-6) -> jax.Array:
  """MMVAE+ posterior scale: softmax(logits) * D + eps over the last axis of size D.

  The scales of one example sum to D (+ D * eps), so their mean is 1 like the unit prior's.
  Shape: (..., D) -> (..., D).
  """
  return jax.nn.softmax(logits, axis=-1) * logits.shape[-1] + eps


# ----------------------------------------------------------------------------- families
# Models pick a family by name (config.model.distribution): posteriors, the fixed prior p(z) =
# family(0, 1) and the noise of reparameterised samples.
FAMILIES = ('laplace', 'gaussian')


def _check_family(family: str) -> None:
  if family not in FAMILIES:
    raise ValueError(f'unknown distribution family {family!r}; choose one of {FAMILIES}.')


def log_prob(family: str, x: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Diagonal log-density of `family`: (..., D) inputs (broadcast) -> (...)."""
  _check_family(family)
  return (laplace_log_prob if family == 'laplace' else normal_log_prob)(x, loc, scale)


def sample(family: str, key: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
  """Reparameterised draw of `family`: shape broadcast(loc, scale)."""
  _check_family(family)
  return (laplace_sample if family == 'laplace' else normal_sample)(key, loc, scale)


def standard_sample(family: str, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """A draw of family(0, 1) of `shape`."""
  _check_family(family)
  return (jax.random.laplace if family == 'laplace' else jax.random.normal)(key, shape)


def scale_from_logits(family: str, logits: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Posterior scales from an encoder's scale head: (..., D) -> (..., D).

  Laplace: MMVAE's softmax(logits) * D + eps. Gaussian: the standard deviation
  exp(logits / 2) (the head predicts a log-variance, as MVAE, mmJSD and MoPoE do) + eps.
  """
  _check_family(family)
  if family == 'laplace':
    return softmax_scale(logits, eps)
  return jnp.exp(0.5 * logits) + eps


def kl_normal(loc1: jax.Array, scale1: jax.Array, loc2: jax.Array | float = 0.0,
              scale2: jax.Array | float = 1.0) -> jax.Array:
  """KL(N(loc1, scale1^2) || N(loc2, scale2^2)), diagonal, summed over the last axis."""
  ratio = jnp.square(scale1 / scale2)
  return 0.5 * jnp.sum(ratio + jnp.square((loc1 - loc2) / scale2) - 1.0 - jnp.log(ratio),
                       axis=-1)
