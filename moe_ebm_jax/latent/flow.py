"""A normalising flow on z (RealNVP's affine coupling layers, Dinh et al. 2017), fitted by
maximum likelihood: the post-hoc prior MultiVae's MAF/IAF samplers stand for.

  z = f(u), u ~ N(0, I);  log p(z) = log N(f^-1(z); 0, I) + log |det d f^-1 / d z|

Each layer keeps half of the coordinates (alternating halves) and moves the others by an affine
map whose log-scale (bounded by tanh) and shift an MLP reads from the kept half. Written here
for the reason mixture.py gives (distrax's backend does not import with this jax).
"""

from __future__ import annotations

import dataclasses
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from moe_ebm_jax.latent import priors


def _masks(num_layers: int, dim: int) -> np.ndarray:
  """Which coordinates each layer keeps: (L, D) bool, alternating halves (none for D = 1, where
  a layer is an unconditioned affine map)."""
  half = np.arange(dim) < dim // 2
  return np.stack([half if i % 2 == 0 else ~half for i in range(num_layers)]) if dim > 1 else \
      np.zeros((num_layers, 1), bool)


class Coupling(nn.Module):
  """One affine coupling layer: the moved coordinates' log-scale and shift from the kept ones."""
  hidden: tuple[int, ...]
  max_log_scale: float = 3.0

  @nn.compact
  def __call__(self, kept: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = kept
    for width in self.hidden:
      h = nn.gelu(nn.Dense(width)(h))
    out = nn.Dense(2 * kept.shape[-1], kernel_init=nn.initializers.zeros)(h)  # Identity at init.
    log_scale, shift = jnp.split(out, 2, axis=-1)
    return self.max_log_scale * jnp.tanh(log_scale / self.max_log_scale), shift


class CouplingFlow(nn.Module):
  """f: u -> z by `num_layers` couplings. `inverse(z)` -> (u, log |det d u / d z|) (N,);
  `forward(u)` -> z."""
  num_layers: int = 6
  hidden: tuple[int, ...] = (64, 64)

  def setup(self):
    self.layers = [Coupling(self.hidden) for _ in range(self.num_layers)]

  def inverse(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    masks = _masks(self.num_layers, z.shape[-1])
    log_det = jnp.zeros(z.shape[:-1])
    for layer, keep in reversed(list(zip(self.layers, masks))):
      log_scale, shift = layer(jnp.where(keep, z, 0.0))
      z = jnp.where(keep, z, (z - shift) * jnp.exp(-log_scale))
      log_det = log_det - jnp.where(keep, 0.0, log_scale).sum(-1)
    return z, log_det

  def forward(self, u: jax.Array) -> jax.Array:
    masks = _masks(self.num_layers, u.shape[-1])
    for layer, keep in zip(self.layers, masks):
      log_scale, shift = layer(jnp.where(keep, u, 0.0))
      u = jnp.where(keep, u, u * jnp.exp(log_scale) + shift)
    return u

  def __call__(self, z: jax.Array) -> jax.Array:
    """log p(z): (..., D) -> (...)."""
    u, log_det = self.inverse(z)
    return -0.5 * jnp.square(u).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi) + log_det


@dataclasses.dataclass(frozen=True)
class FlowPrior(priors.Prior):
  """The flow as a prior on z (priors.py's interface). Fitted after training (fit), not in the
  training step: `learn` returns zero gradients."""
  num_layers: int = 6
  hidden: tuple[int, ...] = (64, 64)

  def __post_init__(self):  # Hashable (static under jit) when rebuilt from JSON's lists.
    object.__setattr__(self, 'hidden', tuple(int(w) for w in self.hidden))

  @property
  def flow(self) -> CouplingFlow:
    return CouplingFlow(self.num_layers, tuple(self.hidden))

  def init(self, key, latent_dim: int):
    return self.flow.init(key, jnp.zeros((1, latent_dim)))

  def log_prob(self, params, beta):
    del beta
    return lambda z: self.flow.apply(params, z)

  def sample(self, params, key, num: int, latent_dim: int, keep_trajectory: bool = False,
             state=None):
    del keep_trajectory, state
    u = jax.random.normal(key, (num, latent_dim))
    return self.flow.apply(params, u, method=CouplingFlow.forward), {}

  def learn(self, params, state, keys, vae, vae_params, x, aux):
    del keys, vae, vae_params, x, aux
    return priors.PriorUpdate(jax.tree.map(jnp.zeros_like, params), state, {},
                              jnp.array(True), jnp.array(True))

  def describe(self) -> str:
    return f'z ~ a {self.num_layers}-layer coupling flow fitted to q(z | X)'


def fit(z, key: jax.Array, prior: FlowPrior, *, steps: int = 2000, batch_size: int = 256,
        learning_rate: float = 1e-3, held_out: float = 0.1) -> tuple[dict, dict]:
  """Adam on the mean negative log-likelihood of minibatches of z (N, D), a held-out fraction
  kept aside to report: (params, {'train_nll', 'held_out_nll', 'steps', 'seconds'})."""
  start = time.time()
  z = np.asarray(z, np.float32)
  k_split, k_init, k_batches = jax.random.split(key, 3)
  order = np.asarray(jax.random.permutation(k_split, len(z)))
  n_out = max(1, int(round(held_out * len(z))))
  train, test = jnp.asarray(z[order[n_out:]]), jnp.asarray(z[order[:n_out]])
  params = prior.init(k_init, z.shape[1])
  tx = optax.adam(learning_rate)
  nll = lambda p, batch: -prior.flow.apply(p, batch).mean()

  @jax.jit
  def step(params, opt_state, k):
    batch = train[jax.random.randint(k, (min(batch_size, len(train)),), 0, len(train))]
    loss, grads = jax.value_and_grad(nll)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  for i in range(steps):
    params, opt_state, _ = step(params, opt_state, jax.random.fold_in(k_batches, i))
  return params, {'train_nll': float(nll(params, train)), 'held_out_nll': float(nll(params, test)),
                  'steps': steps, 'seconds': time.time() - start}
