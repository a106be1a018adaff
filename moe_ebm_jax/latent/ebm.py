"""The latent EBM prior p_a(z) = exp(f_a(z)) p0(z) / Z(a), its Langevin chains and its loss.

f_a is the energy network's output (the negative energy); p0 = Laplace(0, I) (the paper's) or
N(0, I) (Pang et al.'s), the `base` argument (config.ebm.base). With a Laplace base, exp(f_a) p0
is normalisable only while f_a grows slower than |z|_1; an MLP grows linearly, at any slope, so
nothing keeps p_a proper; a Gaussian base is proper for every MLP (docs/fidelity.md).

- Prior chain: z0 ~ p0 (or a persistent chain's last state, priors.py), Langevin on
  log pi = f_a(z) + log p0(z).
- Posterior chain ("MCMC inference"): z0 ~ q(z | X) (one expert per example), Langevin on
  log pi = sum_m log p(x_m | w_m, z) + f_a(z) + log p0(z), with w_m the posterior samples held
  fixed ('z') or moved as well under their prior p(w) ('zw').
- EBM loss: mean f_a(prior samples) - mean f_a(posterior samples), samples held constant; its
  gradient is the maximum-likelihood gradient E_post[grad f_a] - E_prior[grad f_a].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from moe_ebm_jax.latent import samplers
from moe_ebm_jax.vae import distributions as dists
from moe_ebm_jax.vae import models
from moe_ebm_jax.vae import networks

Params = Any
POSTERIOR_LATENTS = ('z', 'zw')
BASES = ('laplace', 'gaussian')


@dataclasses.dataclass(frozen=True)
class Base:
  """The EBM's base density p0 = family(0, scale^2 I) (config.ebm.base, config.ebm.base_scale).

  Hashable (static under jit). Every function here that takes a base takes a Base or a family
  name (scale 1).
  """
  family: str = 'laplace'
  scale: float = 1.0

  def __post_init__(self):
    if self.family not in BASES:
      raise ValueError(f'EBM base {self.family!r}: choose one of {BASES}.')
    if not self.scale > 0:
      raise ValueError(f'EBM base scale {self.scale!r} must be > 0.')

  def log_prob(self, z: jax.Array) -> jax.Array:
    """log p0(z): (..., D) -> (...)."""
    return dists.log_prob(self.family, z, 0.0, self.scale)

  def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return self.scale * dists.standard_sample(self.family, key, shape)


def as_base(base: str | Base) -> Base:
  return base if isinstance(base, Base) else Base(base)


def base_log_prob(base: str | Base, z: jax.Array) -> jax.Array:
  """log p0(z) of the EBM's base: (..., D) -> (...)."""
  return as_base(base).log_prob(z)


def prior_log_prob(energy: networks.EnergyMLP, ebm_params: Params,
                   base: str = 'laplace') -> Callable:
  """z (..., D) -> f_a(z) + log p0(z), (...)."""
  return lambda z: energy.apply(ebm_params, z) + base_log_prob(base, z)


def sample_prior(energy: networks.EnergyMLP, ebm_params: Params, key: jax.Array,
                 batch_size: int, latent_dim: int, *, num_steps: int, step_size: float,
                 noise_scale: float = 1.0, keep_trajectory: bool = False,
                 unroll: int | bool = 1, sampler: str = 'langevin', base: str = 'laplace',
                 init: jax.Array | None = None):
  """Short-run prior chain from p0 (`base`: a Base or a family name) or from `init` (B, D),
  e.g. persistent chains, with `sampler` (samplers.py): (z (B, D), diagnostics)."""
  k0, k1 = jax.random.split(key)
  z0 = as_base(base).sample(k0, (batch_size, latent_dim)) if init is None else init
  return samplers.get(sampler)(prior_log_prob(energy, ebm_params, base), z0, k1,
                               num_steps=num_steps, step_size=step_size,
                               noise_scale=noise_scale, keep_trajectory=keep_trajectory,
                               unroll=unroll)


def pick_expert(key: jax.Array, samples: jax.Array) -> jax.Array:
  """One draw from the uniform mixture: per example the sample of a random expert.

  samples (M, B, D) -> (B, D).
  """
  m, b = samples.shape[:2]
  expert = jax.random.randint(key, (b,), 0, m)
  return samples[expert, jnp.arange(b)]


def pick_observed_expert(key: jax.Array, samples: jax.Array, observed: jax.Array) -> jax.Array:
  """One draw from the uniform mixture of each example's observed experts: samples (M, B, D),
  observed bool (M, B) (at least one per example) -> (B, D)."""
  b = samples.shape[1]
  expert = jax.random.categorical(key, jnp.where(observed.T, 0.0, -jnp.inf), axis=-1)
  return samples[expert, jnp.arange(b)]


def posterior_log_prob(vae: models.MultimodalVAE, vae_params: Params,
                       energy: networks.EnergyMLP, ebm_params: Params, x: models.Data,
                       observed: jax.Array, w: jax.Array | None = None,
                       base: str = 'laplace') -> Callable:
  """log pi of the posterior chain over the state {'z': (B, Dz)[, 'w': (B, M, Dw)]}.

  x: the batch's modalities {name: (B, *shape)} (models.py), each scored by its own likelihood;
  observed: bool (M,) which modalities enter the likelihood (all for training, the source(s)
  for conditional generation), or (M, B) per example (incomplete data: the observed ones); w
  (M, B, Dw) fixed private latents, used when the state has no 'w'.
  """

  def log_prob(state):
    z = state['z']
    w_m = jnp.moveaxis(state['w'], 1, 0) if 'w' in state else w  # (M, B, Dw)
    z_m = jnp.broadcast_to(z[None], (w_m.shape[0],) + z.shape)
    log_px = vae.log_likelihood(vae_params, jnp.concatenate([w_m, z_m], axis=-1), x)  # (M, B)
    mask = observed if observed.ndim == 2 else observed[:, None]
    lp = jnp.where(mask, log_px, 0.0).sum(axis=0)
    lp += energy.apply(ebm_params, z) + base_log_prob(base, z)
    if 'w' in state:
      lp += models.standard_laplace_log_prob(state['w']).sum(axis=-1)
    return lp

  return log_prob


def sample_posterior(vae: models.MultimodalVAE, vae_params: Params,
                     energy: networks.EnergyMLP, ebm_params: Params, x: models.Data,
                     z0: jax.Array, w: jax.Array, key: jax.Array, *, num_steps: int,
                     step_size: float, noise_scale: float = 1.0, latents: str = 'z',
                     observed: jax.Array | None = None, keep_trajectory: bool = False,
                     unroll: int | bool = 1, sampler: str = 'langevin',
                     base: str = 'laplace'):
  """Posterior chain from z0 (B, Dz) with private latents w (M, B, Dw), run by `sampler`
  (samplers.py): (state dict, diag)."""
  if latents not in POSTERIOR_LATENTS:
    raise ValueError(f'posterior latents {latents!r}: choose one of {POSTERIOR_LATENTS}.')
  if observed is None:
    observed = jnp.ones((w.shape[0],), bool)
  state = {'z': z0}
  if latents == 'zw':
    state['w'] = jnp.moveaxis(w, 0, 1)  # Leading batch axis for the sampler.
  log_prob = posterior_log_prob(vae, vae_params, energy, ebm_params, x, observed, w, base)
  return samplers.get(sampler)(log_prob, state, key, num_steps=num_steps,
                               step_size=step_size, noise_scale=noise_scale,
                               keep_trajectory=keep_trajectory, unroll=unroll)


def ebm_loss(energy: networks.EnergyMLP, ebm_params: Params, z_prior: jax.Array,
             z_posterior: jax.Array, energy_l2: float = 0.0,
             posterior_weights: jax.Array | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """mean f_a(prior) - mean f_a(posterior) over (..., D) samples, with energy diagnostics.

  posterior_weights (...) summing to 1 (incomplete data: each example's observed experts)
  replace the posterior samples' uniform mean by a weighted one.

  energy_l2 > 0 adds energy_l2 * (mean f_a(prior)^2 + mean f_a(posterior)^2) (as Du & Mordatch
  2019): it keeps f_a from growing without bound at posterior samples the short-run prior
  chains do not reach, which the encoder, rewarded by f_a through the KL term, would chase.
  """
  f_prior = energy.apply(ebm_params, jax.lax.stop_gradient(z_prior))
  f_post = energy.apply(ebm_params, jax.lax.stop_gradient(z_posterior))
  if posterior_weights is None:
    post_mean = lambda a: a.mean()
  else:
    post_mean = lambda a: (posterior_weights * a).sum()
  contrastive = f_prior.mean() - post_mean(f_post)
  loss = contrastive + energy_l2 * (jnp.square(f_prior).mean() + post_mean(jnp.square(f_post)))
  # Energies are -f_a: report them as such.
  return loss, {'ebm_loss': contrastive, 'energy_prior': -f_prior.mean(),
                'energy_posterior': -post_mean(f_post)}


def log_partition_grid(f: Callable[[jax.Array], jax.Array], base: str | Base, latent_dim: int,
                       *, half_width: float | None = None, num: int = 801,
                       chunk: int = 65536) -> jax.Array:
  """log Z = log of the integral of exp(f(z)) p0(z) dz by the midpoint rule on [-h, h]^D.

  For the low-dimensional latents that can be drawn (D = 1 or 2; the grid has num^D points):
  the EBM prior exp(f_a) p0 / Z is a normalised density only with Z, which training never
  needs, and a bound that uses the prior needs it. f: (N, D) -> (N,).
  """
  if latent_dim not in (1, 2):
    raise ValueError(f'a grid integral needs D = 1 or 2, not {latent_dim}: use '
                     'log_partition_monte_carlo.')
  points, step = _midpoint_grid(_half_width(base, half_width), num, latent_dim)
  return jax.nn.logsumexp(_log_density_on(f, base, points, chunk)) + latent_dim * np.log(step)


def _half_width(base, half_width: float | None) -> float:
  """The grid's half width: given, or 12 (6 base scales where the base is wider)."""
  return half_width if half_width is not None else max(12.0, 6.0 * as_base(base).scale)


def _midpoint_grid(half_width: float, num: int, dim: int) -> tuple[np.ndarray, float]:
  """The num^dim cell midpoints of [-h, h]^dim, (num^dim, dim) float32, and the cell width."""
  step = 2 * half_width / num
  axis = -half_width + step * (np.arange(num) + 0.5)
  points = axis[:, None] if dim == 1 else np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
  return points.astype(np.float32), step


def _log_density_on(f, base: str | Base, points: np.ndarray, chunk: int = 65536) -> jax.Array:
  """f(z) + log p0(z) at (N, D) points, in chunks of one compiled shape: (N,)."""
  log_density = jax.jit(lambda z: f(z) + base_log_prob(base, z))
  pad = -len(points) % chunk
  padded = np.concatenate([points, np.zeros((pad, points.shape[1]), points.dtype)])
  values = [log_density(c) for c in padded.reshape(-1, chunk, points.shape[1])]
  return jnp.concatenate(values)[:len(points)]


def log_partition_monte_carlo(f: Callable[[jax.Array], jax.Array], base: str | Base,
                              latent_dim: int,
                              key: jax.Array, num: int = 1_000_000) -> jax.Array:
  """log Z = log E_{z ~ p0}[exp f(z)] from `num` draws of p0 (any D; biased low for small num
  when exp f varies much over p0, as Jensen's inequality says). f: (N, D) -> (N,)."""
  z = as_base(base).sample(key, (num, latent_dim))
  return jax.nn.logsumexp(jax.jit(f)(z)) - jnp.log(num)


def chain_against_density(f: Callable[[jax.Array], jax.Array], base: str | Base, samples,
                          key: jax.Array, *, bins: int = 12, half_width: float | None = None,
                          num: int = 600) -> dict[str, float]:
  """Does a chain sample exp(f) p0 / Z? (N, 2) samples against that density on a num x num
  grid over [-h, h]^2: the total variation over bins x bins cells of the samples' range (plus
  one cell for the rest of the plane), the same distance for N exact draws from the gridded
  density (what sampling noise alone gives), the mean |z| of each, and log Z. A short-run chain
  need not sample the density of the f_a it trains. f: (N, 2) -> (N,)."""
  samples = np.asarray(samples)
  points, step = _midpoint_grid(_half_width(base, half_width), num, 2)
  log_p = np.asarray(_log_density_on(f, base, points), np.float64)
  log_z = float(np.log(np.exp(log_p - log_p.max()).sum()) + log_p.max() + 2 * np.log(step))
  p = np.exp(log_p - log_p.max())
  p /= p.sum()
  edges = np.linspace(-1.001, 1.001, bins + 1) * float(np.abs(samples).max())

  def histogram(z, weights=None):
    h, _, _ = np.histogram2d(z[:, 0], z[:, 1], bins=[edges, edges], weights=weights)
    h = h.ravel() / (len(z) if weights is None else 1.0)
    return np.append(h, max(0.0, 1.0 - h.sum()))

  density = histogram(points, p)
  k_pick, k_jitter = jax.random.split(key)
  exact = points[np.asarray(jax.random.choice(k_pick, len(p), (len(samples),), p=jnp.asarray(p)))]
  exact = exact + np.asarray(jax.random.uniform(k_jitter, exact.shape, minval=-step / 2,
                                                maxval=step / 2))
  return {'tv_chain': round(0.5 * float(np.abs(histogram(samples) - density).sum()), 4),
          'tv_exact_draws': round(0.5 * float(np.abs(histogram(exact) - density).sum()), 4),
          'mean_radius_chain': round(float(np.linalg.norm(samples, axis=1).mean()), 3),
          'mean_radius_density': round(float((np.linalg.norm(points, axis=1) * p).sum()), 3),
          'log_z': round(log_z, 4)}
