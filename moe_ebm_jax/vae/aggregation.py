"""How unimodal posteriors q(z | x_m) combine into q(z | X_S) for a subset S of modalities.

- 'moe'   mixture of experts (MMVAE, MMVAE+, and mmJSD's joint posterior): z from an expert
          drawn uniformly from S.
- 'poe'   product of Gaussian experts with the prior N(0, I) as one more expert (MVAE).
- 'mopoe' mixture of products of experts (MoPoE): a non-empty subset S' of S drawn uniformly
          (2^|S| - 1 of them), then z from the product of the experts in S' (no prior expert).

Unimodal posteriors have parameters (M, B, D); a subset is a bool mask (M,) or (M, B).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from moe_ebm_jax.vae import distributions as dists

AGGREGATIONS = ('moe', 'poe', 'mopoe')


def nonempty_subsets(num_modalities: int) -> np.ndarray:
  """Every non-empty subset of range(M) as a bool (2^M - 1, M) matrix, by size then
  lexicographically."""
  rows = [np.isin(np.arange(num_modalities), s)
          for size in range(1, num_modalities + 1)
          for s in itertools.combinations(range(num_modalities), size)]
  return np.stack(rows)


def product_of_experts(loc: jax.Array, scale: jax.Array, mask: jax.Array,
                       prior_expert: bool = False,
                       var_eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
  """Gaussian product of the experts in `mask` (precision-weighted): -> (loc, scale) (B, D).

  loc, scale (M, B, D) standard deviations; mask bool (M,) or (M, B). With `prior_expert`,
  N(0, I) is one more expert (so an empty mask gives the prior). Every expert's variance gets
  `var_eps` added first, as the MVAE and MoPoE references' PoE does (eps 1e-8).
  """
  mask = jnp.asarray(mask)
  mask = mask.reshape(mask.shape + (1,) * (loc.ndim - mask.ndim)).astype(loc.dtype)
  precision = mask / (jnp.square(scale) + var_eps)
  total = precision.sum(axis=0) + (1.0 / (1.0 + var_eps) if prior_expert else 0.0)
  return (precision * loc).sum(axis=0) / total, jax.lax.rsqrt(total)


def observed_weights(observed: jax.Array) -> jax.Array:
  """Each example's uniform weights over its observed experts, then the batch's mean: observed
  bool (M, B) -> (M, B) float, 1 / (n_observed_b * B) where observed, 0 elsewhere (summing to
  1). Incomplete data's mixture of the observed experts, as an average over (expert, example)."""
  obs = observed.astype(jnp.float32)
  return obs / (obs.sum(axis=0, keepdims=True) * obs.shape[1])


def uniform_choice(key: jax.Array, allowed: jax.Array) -> jax.Array:
  """Per example an index drawn uniformly from the allowed ones: allowed bool (B, K) -> (B,)."""
  return jax.random.categorical(key, jnp.where(allowed, 0.0, -jnp.inf), axis=-1)


def sample(aggregation: str, loc: jax.Array, scale: jax.Array, mask: jax.Array, key: jax.Array,
           family: str) -> jax.Array:
  """One draw z (B, D) from q(z | X_S) for the unimodal posteriors (loc, scale) (M, B, D).

  mask: bool (M,) or (M, B), at least one True per example.
  """
  m, b = loc.shape[:2]
  mask = jnp.broadcast_to(jnp.asarray(mask).reshape((m, -1)), (m, b))
  k_pick, k_noise = jax.random.split(key)
  if aggregation == 'moe':
    expert = uniform_choice(k_pick, mask.T)
    rows = jnp.arange(b)
    return dists.sample(family, k_noise, loc[expert, rows], scale[expert, rows])
  if family != 'gaussian':
    raise ValueError(f'aggregation {aggregation!r} multiplies Gaussian experts, not {family!r}.')
  if aggregation == 'poe':
    return dists.normal_sample(k_noise, *product_of_experts(loc, scale, mask, prior_expert=True))
  if aggregation == 'mopoe':
    subsets = jnp.asarray(nonempty_subsets(m))  # (S, M)
    inside = ~jnp.any(subsets[None] & ~mask.T[:, None], axis=-1)  # (B, S): subset within mask.
    chosen = subsets[uniform_choice(k_pick, inside)]  # (B, M)
    return dists.normal_sample(k_noise, *product_of_experts(loc, scale, chosen.T))
  raise ValueError(f'unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}.')


def mean(aggregation: str, loc: jax.Array, scale: jax.Array, mask: jax.Array) -> jax.Array:
  """The mean of q(z | X_S) (B, D) for the unimodal posteriors (loc, scale) (M, B, D) and a
  mask (M,) or (M, B): the experts' average ('moe'), the product's mean with the prior expert
  ('poe'), the average of every subset's product ('mopoe')."""
  m, b = loc.shape[:2]
  mask = jnp.broadcast_to(jnp.asarray(mask).reshape((m, -1)), (m, b)).astype(loc.dtype)
  if aggregation == 'moe':
    return (mask[..., None] * loc).sum(0) / mask.sum(0)[:, None]
  if aggregation == 'poe':
    return product_of_experts(loc, scale, mask.astype(bool), prior_expert=True)[0]
  if aggregation == 'mopoe':
    subsets = jnp.asarray(nonempty_subsets(m))  # (S, M)
    inside = ~jnp.any(subsets[None] & ~mask.T.astype(bool)[:, None], axis=-1)  # (B, S)
    means = jnp.stack([product_of_experts(loc, scale, s)[0] for s in subsets])  # (S, B, D)
    weights = inside.T.astype(loc.dtype)[..., None]
    return (weights * means).sum(0) / weights.sum(0)
  raise ValueError(f'unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}.')
