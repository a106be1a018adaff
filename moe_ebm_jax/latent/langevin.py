"""Short-run (unadjusted) Langevin dynamics on batches of latents, as a `jax.lax.scan`.

One step, with step size s:

  z <- z + (s^2 / 2) * grad_z log pi(z) + noise_scale * s * eps,   eps ~ N(0, I).

Used for prior samples (log pi = f_a(z) + log p0(z)) and posterior samples (log pi adds
log p(X | z)) of the EBM prior; see docs/method.md, section 1.5. There is no
Metropolis-Hastings correction, so the chain's stationary law is off by O(s^2).

`sample` is jit-able as long as `num_steps` (and `keep_trajectory`) are static: jit the caller
with `static_argnames=('num_steps',)` or close over them. It does not stop gradients; callers
that want samples as constants apply `jax.lax.stop_gradient` themselves.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
LogProbFn = Callable[[PyTree], jax.Array]


def batch_size(leaves: list[jax.Array]) -> int:
  if not leaves:
    raise ValueError('Langevin state has no arrays.')
  sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError('every leaf of the Langevin state needs the same leading batch axis; got '
                     f'shapes {[leaf.shape for leaf in leaves]}.')
  return sizes.pop()


def normal_like(key: jax.Array, state: PyTree) -> PyTree:
  """N(0, I) noise shaped like `state` (a pytree of (B, ...) arrays).

  Drawn as one (B, total event size) array and cut into the leaves in order, so a dict of
  (B, d_i) leaves gets the same noise as their concatenation along the last axis.
  """
  leaves, treedef = jax.tree.flatten(state)
  batch = batch_size(leaves)
  sizes = [int(np.prod(leaf.shape[1:])) for leaf in leaves]
  dtype = jnp.result_type(*leaves)
  eps = jax.random.normal(key, (batch, sum(sizes)), dtype)
  chunks = jnp.split(eps, np.cumsum(sizes)[:-1], axis=1)
  out = [c.reshape(leaf.shape).astype(leaf.dtype) for c, leaf in zip(chunks, leaves)]
  return jax.tree.unflatten(treedef, out)


def per_example_sq_norm(tree: PyTree) -> jax.Array:
  """Squared L2 norm over all leaves and non-batch axes: pytree of (B, ...) -> (B,)."""
  return sum(jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=1) for g in jax.tree.leaves(tree))


def per_example_norm(tree: PyTree) -> jax.Array:
  """L2 norm over all leaves and non-batch axes: pytree of (B, ...) -> (B,)."""
  return jnp.sqrt(per_example_sq_norm(tree))


def value_and_grad(log_prob: LogProbFn):
  """state -> ((sum of log_prob, per-example log_prob (B,)), gradient like state): examples are
  independent, so the gradient of the sum is the per-example gradient."""
  def total_log_prob(z):
    lp = log_prob(z)
    return lp.sum(), lp
  return jax.value_and_grad(total_log_prob, has_aux=True)


def sample(log_prob: LogProbFn,
           init: PyTree,
           key: jax.Array,
           *,
           num_steps: int,
           step_size: float | jax.Array,
           noise_scale: float | jax.Array = 1.0,
           keep_trajectory: bool = False,
           unroll: int | bool = 1) -> tuple[PyTree, dict[str, Any]]:
  """Runs `num_steps` Langevin steps from `init`, ascending `log_prob`.

  Args:
    log_prob: maps a state (an array (B, ...) or a pytree of arrays sharing the leading batch
      axis B) to per-example log-densities (B,), up to a constant. Examples must be
      independent: the gradient of log_prob(z).sum() is then the per-example gradient.
    init: the starting state, (B, ...) or a pytree of such arrays.
    key: PRNG key; split into one key per step.
    num_steps: number of steps (static under jit).
    step_size: s in the update above (a float or a scalar array; may be traced).
    noise_scale: multiplies the injected noise; 1 is Langevin, 0 is gradient ascent.
    keep_trajectory: also return the state after every step (static under jit).
    unroll: steps per iteration of the compiled loop (jax.lax.scan's `unroll`; True unrolls all).

  Returns:
    (final state like `init`, diagnostics). Diagnostics hold per-step arrays (num_steps,):
    'log_prob', the batch mean of log_prob at the state before each step, and 'grad_norm', the
    batch mean of the per-example gradient L2 norm over all leaves; with keep_trajectory,
    'trajectory' is the state after each step, leaves stacked to (num_steps, B, ...).
  """

  grad_fn = value_and_grad(log_prob)

  def step(z, step_key):
    (_, lp), grad = grad_fn(z)
    eps = normal_like(step_key, z)
    # The paper's Eq. 9 prints a minus sign before the gradient: a typo. We ascend log pi.
    z_next = jax.tree.map(
        lambda z_, g, e: (z_ + 0.5 * step_size**2 * g + noise_scale * step_size * e).astype(
            z_.dtype), z, grad, eps)  # Keeps the scan carry's dtype for low-precision states.
    out = {'log_prob': jnp.mean(lp), 'grad_norm': jnp.mean(per_example_norm(grad))}
    if keep_trajectory:
      out['trajectory'] = z_next
    return z_next, out

  keys = jax.random.split(key, num_steps)
  return jax.lax.scan(step, init, keys, unroll=unroll)
