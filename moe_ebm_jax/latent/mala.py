"""Metropolis-adjusted Langevin (MALA) on batches of latents, as a `jax.lax.scan`.

Each step proposes the Langevin move of langevin.py,

  z' = z + (s^2 / 2) * grad log pi(z) + sigma * eps,   sigma = noise_scale * s,  eps ~ N(0, I),

and accepts it per example with probability min(1, pi(z') q(z | z') / (pi(z) q(z' | z))), q the
Gaussian proposal N(z + (s^2 / 2) grad log pi(z), sigma^2 I). The correction makes pi the chain's
stationary law exactly, whatever the step size (unadjusted Langevin is off by O(s^2)); the price
is rejected moves. One gradient evaluation per step, as in langevin.sample: the log-density and
gradient of the current state are carried through the loop.

Same signature and diagnostics as langevin.sample, plus 'accept_rate' (num_steps,): the batch
mean of the acceptance indicator. A proposal whose log-density is not finite is rejected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_ebm_jax.latent import langevin

PyTree = langevin.PyTree


def _select(accept: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """Per example b: new[b] where accept[b], else old[b]."""
  def pick(n, o):
    mask = accept.reshape(accept.shape + (1,) * (n.ndim - 1))
    return jnp.where(mask, n, o)
  return jax.tree.map(pick, new, old)


def sample(log_prob: langevin.LogProbFn,
           init: PyTree,
           key: jax.Array,
           *,
           num_steps: int,
           step_size: float | jax.Array,
           noise_scale: float | jax.Array = 1.0,
           keep_trajectory: bool = False,
           unroll: int | bool = 1) -> tuple[PyTree, dict[str, jax.Array]]:
  """Runs `num_steps` MALA steps from `init`; arguments and returns as langevin.sample's."""
  if isinstance(noise_scale, (int, float)) and noise_scale <= 0:
    raise ValueError(f'MALA needs noise_scale > 0 (its proposal is a Gaussian); got '
                     f'{noise_scale}.')

  grad_fn = langevin.value_and_grad(log_prob)
  sigma = noise_scale * step_size
  drift = lambda z, g: jax.tree.map(lambda z_, g_: z_ + 0.5 * step_size**2 * g_, z, g)

  def step(carry, step_key):
    z, lp, grad = carry
    k_noise, k_accept = jax.random.split(step_key)
    eps = langevin.normal_like(k_noise, z)
    proposal = jax.tree.map(lambda m, e: (m + sigma * e).astype(m.dtype), drift(z, grad), eps)
    (_, lp_new), grad_new = grad_fn(proposal)
    back = jax.tree.map(lambda a, b: a - b, z, drift(proposal, grad_new))
    # log q(z | z') - log q(z' | z); the forward residual z' - mean(z) is sigma * eps.
    log_q_ratio = (langevin.per_example_sq_norm(eps) -
                   langevin.per_example_sq_norm(back) / sigma**2) / 2
    log_alpha = lp_new - lp + log_q_ratio
    log_alpha = jnp.where(jnp.isfinite(log_alpha), log_alpha, -jnp.inf)
    u = jax.random.uniform(k_accept, lp.shape, lp.dtype)
    accept = jnp.log(u) < log_alpha
    out = {'log_prob': jnp.mean(lp), 'grad_norm': jnp.mean(langevin.per_example_norm(grad)),
           'accept_rate': jnp.mean(accept.astype(jnp.float32))}
    carry = (_select(accept, proposal, z), jnp.where(accept, lp_new, lp),
             _select(accept, grad_new, grad))
    if keep_trajectory:
      out['trajectory'] = carry[0]
    return carry, out

  (_, lp0), grad0 = grad_fn(init)
  batch = langevin.batch_size(jax.tree.leaves(init))
  if lp0.shape != (batch,):
    raise ValueError(f'log_prob must return per-example log-densities ({batch},); got '
                     f'{lp0.shape}.')
  keys = jax.random.split(key, num_steps)
  (z, _, _), diagnostics = jax.lax.scan(step, (init, lp0, grad0), keys, unroll=unroll)
  return z, diagnostics
